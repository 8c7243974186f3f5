"""The PF commands' one interface: the simulated tree (state file per VF, VF count as
the kernel does it), the real ``ip link`` command line it would run, the choice by
KVMOPS_SYSFS_ROOT, and the database's guard against a VF given twice."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import (
    AlreadyExistsError,
    HypervisorError,
    NotFoundError,
    StateError,
    ValidationError,
)
from kvmops.host.sriov import RealPf, SimulatedPf, control, write_fake_tree
from kvmops.network.sriov import RESET, VfConfig, discover


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    write_fake_tree(root, "kvt0", 4, "ixgbe")
    return root


def test_fake_tree_refusals(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(AlreadyExistsError, match="PF 'kvt0' already exists"):
        write_fake_tree(tree, "kvt0", 4, "ixgbe")
    with pytest.raises(ValidationError, match="invalid VF count 0"):
        write_fake_tree(tree, "kvt9", 0, "ixgbe")
    with pytest.raises(ValidationError, match="invalid VF count 129"):
        write_fake_tree(tree, "kvt9", 129, "ixgbe")
    with pytest.raises(ValidationError, match="invalid PF name"):
        write_fake_tree(tree, "../x", 4, "ixgbe")
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(ValidationError, match="not empty and not a simulated"):
        write_fake_tree(other, "kvt0", 4, "ixgbe")


def test_simulated_vf_settings_and_reset(tree: Path) -> None:
    ctl = SimulatedPf(tree)
    assert all(s.is_reset for s in ctl.vf_states("kvt0").values())
    config = VfConfig(mac="52:54:00:00:00:07", vlan=7, max_tx_rate=100, spoofchk=False,
                      trust=True)
    ctl.set_vf("kvt0", 2, config)
    assert ctl.vf_states("kvt0")[2] == config.state()
    ctl.set_vf("kvt0", 2, RESET)
    state = ctl.vf_states("kvt0")[2]
    assert state.is_reset and state.spoofchk and not state.trust
    with pytest.raises(StateError, match="has no VF 4: RTNETLINK answers: Cannot allocate"):
        ctl.set_vf("kvt0", 4, config)
    with pytest.raises(NotFoundError, match="PF 'nope' not found"):
        ctl.vf_states("nope")


def test_simulated_vf_count(tree: Path) -> None:
    ctl = SimulatedPf(tree)
    ctl.set_vf("kvt0", 1, VfConfig(mac="52:54:00:00:00:01"))
    pf = discover(tree, "kvt0")[0]
    ctl.set_numvfs(pf, 2)
    pf = discover(tree, "kvt0")[0]
    assert pf.numvfs == 2 and [v.index for v in pf.vfs] == [0, 1]
    assert ctl.vf_states("kvt0")[1].is_reset  # new VFs start from the kernel's defaults
    with pytest.raises(HypervisorError, match="out of range"):
        ctl.set_numvfs(pf, 5)
    ctl.set_numvfs(pf, 0)
    assert discover(tree, "kvt0")[0].vfs == []


def test_real_pf_runs_one_ip_link_command(monkeypatch: pytest.MonkeyPatch, tree: Path
                                          ) -> None:
    calls: list[list[str]] = []

    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr("kvmops.host.sriov.shutil.which", lambda name: "/sbin/ip")
    monkeypatch.setattr("kvmops.host.sriov.subprocess.run", run)
    RealPf(tree).set_vf("kvt0", 3, VfConfig(mac="52:54:00:00:00:03", vlan=10,
                                            max_tx_rate=500, spoofchk=True, trust=False))
    assert calls == [["/sbin/ip", "link", "set", "dev", "kvt0", "vf", "3", "mac",
                      "52:54:00:00:00:03", "vlan", "10", "max_tx_rate", "500", "spoofchk",
                      "on", "trust", "off"]]
    # The VF count: N -> M goes through 0, as the kernel requires.
    pf = discover(tree, "kvt0")[0]
    device = (tree / "class/net/kvt0/device").resolve()
    writes: list[str] = []
    original = Path.write_text

    def spy(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name == "sriov_numvfs":
            writes.append(data)
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", spy)
    RealPf(tree).set_numvfs(pf, 2)
    assert writes == ["0", "2"]
    assert (device / "sriov_numvfs").read_text() == "2"


def test_real_pf_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 2, "", "RTNETLINK answers: Invalid argument\n")

    monkeypatch.setattr("kvmops.host.sriov.shutil.which", lambda name: "/sbin/ip")
    monkeypatch.setattr("kvmops.host.sriov.subprocess.run", run)
    with pytest.raises(HypervisorError, match="setting VF 1 of PF 'eth0' failed: RTNETLINK "
                                              "answers: Invalid argument"):
        RealPf().set_vf("eth0", 1, RESET)


def test_control_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch, tree: Path,
                                              tmp_path: Path) -> None:
    monkeypatch.delenv("KVMOPS_SYSFS_ROOT", raising=False)
    assert isinstance(control(), RealPf) and control().root == Path("/sys")
    monkeypatch.setenv("KVMOPS_SYSFS_ROOT", str(tree))
    chosen = control()
    assert isinstance(chosen, SimulatedPf) and chosen.simulated
    monkeypatch.setenv("KVMOPS_SYSFS_ROOT", str(tmp_path))  # no marker: never written to
    with pytest.raises(ValidationError, match="is not a simulated SR-IOV tree"):
        control()
    monkeypatch.setenv("KVMOPS_SYSFS_ROOT", "relative/dir")
    with pytest.raises(ValidationError, match="not an absolute path"):
        control()


def test_database_never_gives_a_vf_twice(tmp_path: Path) -> None:
    from kvmops.store import migrated
    from kvmops.store import sriov as store_sriov

    with migrated(f"sqlite:///{tmp_path / 'k.db'}") as store:
        store_sriov.create_pool(store, "p", ["kvt0"], "root")
        with pytest.raises(AlreadyExistsError, match="already in SR-IOV pool 'p'"):
            store_sriov.create_pool(store, "q", ["kvt0"], "root")
        args: dict[str, Any] = {
            "pool": "p", "pf": "kvt0", "vf": 3, "pci": "0000:03:10.3", "vm": "a",
            "vm_uuid": None, "mac": "52:54:00:00:00:01", "vlan": 0, "max_tx_rate": 0,
            "spoofchk": True, "trust": False, "user": "root"}
        first = store_sriov.add_allocation(store, **args)
        with pytest.raises(StateError, match="VF 3 of PF 'kvt0' is already allocated"):
            store_sriov.add_allocation(store, **{**args, "vm": "b"})
        with pytest.raises(StateError, match=r"cannot delete SR-IOV pool 'p'.*VM\(s\) a"):
            store_sriov.delete_pool(store, "p")
        store_sriov.delete_allocation(store, first.id)
        store_sriov.delete_pool(store, "p")
        assert store_sriov.pools(store) == []
        store_sriov.create_pool(store, "q", ["kvt0"], "root")  # the PF is free again


def test_a_command_skips_alembic_on_a_database_at_head(tmp_path: Path) -> None:
    from kvmops.store.db import MIGRATIONS, Store, head_revision, migrated

    newest = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("0*.py"))
    assert head_revision() == newest
    url = f"sqlite:///{tmp_path / 'h.db'}"
    fresh = Store(url)
    try:
        assert not fresh.at_head()  # no schema yet: migrated() runs the migrations
    finally:
        fresh.close()
    with migrated(url) as store:
        assert store.at_head()
        assert {"sriov_pools", "sriov_pfs", "sriov_allocations"} <= set(store.tables())


def test_a_virtfn_link_naming_no_pci_address_is_refused(tree: Path) -> None:
    device = (tree / "class/net/kvt0/device").resolve()
    (device / "virtfn1").unlink()
    (device / "virtfn1").symlink_to("..")
    ctl = SimulatedPf(tree)
    with pytest.raises(StateError, match="does not name a VF's PCI address"):
        ctl.set_vf("kvt0", 1, RESET)
    with pytest.raises(StateError, match="does not name a VF's PCI address"):
        ctl.set_numvfs(discover(tree, "kvt0")[0], 0)
    assert (tree / "devices").is_dir()  # nothing above the VF directories was removed

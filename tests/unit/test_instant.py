"""Instant recovery's pure parts: the disk's backing chain in the definition (formats
named, repository files never relabelled), the records, and prune's refusal to touch a
chain a recovery still reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from kvmops.backup import instant
from kvmops.backup.instant import InstantDisk, InstantRecord, InstantState
from kvmops.errors import NotFoundError, StateError

XML = """<domain type='qemu'><name>n</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/img/n-vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/img/other.qcow2'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _record(vm: str, state: InstantState = InstantState.PULLING, repo: str = "/repo",
            backups: tuple[str, ...] = ("F", "I1")) -> InstantRecord:
    return InstantRecord(vm=vm, source_vm="web", repo=repo, backup_id=backups[-1],
                         state=state,
                         disks=[InstantDisk(target="vda", overlay=f"/img/{vm}-vda.qcow2",
                                            chain=[f"/repo/web/backups/{b}/vda.qcow2"
                                                   for b in reversed(backups)],
                                            backups=list(backups), size=1 << 26)])


def test_backing_chain_is_spelled_out_and_never_relabelled() -> None:
    chain = [Path("/repo/web/backups/I1/vda.qcow2"), Path("/repo/web/backups/F/vda.qcow2")]
    root = etree.fromstring(instant.with_backing(XML, {"vda": chain}).encode())
    vda, vdb = root.findall("devices/disk")
    assert vdb.find("backingStore") is None  # other disks untouched
    found = []
    store = vda.find("backingStore")
    while store is not None and store.find("source") is not None:
        fmt = store.find("format")
        assert fmt is not None and fmt.get("type") == "qcow2"
        source = store.find("source")
        assert source is not None
        label = source.find("seclabel")
        assert label is not None and label.get("model") == "dac"
        assert label.get("relabel") == "no"
        found.append(source.get("file"))
        store = store.find("backingStore")
    assert found == [str(p) for p in chain]
    assert store is not None and len(store) == 0  # the chain ends there: nothing probed
    # The overlay itself is the VM's own file: libvirt labels it as usual.
    top = vda.find("source")
    assert top is not None and top.find("seclabel") is None


def test_records_round_trip_and_forget(state_dir: Path) -> None:
    with pytest.raises(NotFoundError):
        instant.load("nope")
    instant.save(_record("a"))
    instant.save(_record("b", InstantState.COMPLETED))
    assert instant.load("a") == _record("a").model_copy(
        update={"started": instant.load("a").started})
    assert [r.vm for r in instant.all_records()] == ["a", "b"]
    assert not list(state_dir.glob("instant/.*.tmp"))  # written atomically
    instant.forget("a")
    assert [r.vm for r in instant.all_records()] == ["b"]


def test_prune_refuses_a_chain_a_recovery_reads(tmp_path: Path) -> None:
    instant.save(_record("now", repo="/repo"))
    instant.save(_record("done", InstantState.COMPLETED, repo="/repo", backups=("F", "I2")))
    assert instant.pinned_backups(Path("/repo"), "web") == {"F", "I1"}
    assert instant.pinned_backups(Path("/other"), "web") == set()
    with pytest.raises(StateError) as err:
        instant.refuse_if_in_use("/repo", "web", {"F", "X"}, "prune")
    assert "'now'" in str(err.value) and "F" in str(err.value)
    instant.refuse_if_in_use("/repo", "web", {"I2", "X"}, "prune")  # completed: free
    instant.refuse_if_in_use("/other", "web", {"F"}, "prune")  # another repository


def test_opened_copies_are_labelled_as_usual() -> None:
    """A store-backed repository's chain is read from kvmops' own opened copies (0600):
    libvirt must give them to libvirt-qemu, so no relabel='no' there."""
    chain = [Path("/img/.n-backup/web/backups/F/vda.qcow2")]
    root = etree.fromstring(instant.with_backing(XML, {"vda": chain}, relabel=True).encode())
    store = root.find("devices/disk/backingStore")
    assert store is not None
    source = store.find("source")
    assert source is not None and source.get("file") == str(chain[0])
    assert source.find("seclabel") is None


def test_serve_start_up_resumes_unfinished_recoveries() -> None:
    """kvmops serve submits one job per recovery left pulling (none for the others)."""
    from types import SimpleNamespace
    from typing import Any

    from kvmops.api.routes.instant import resume_at_startup

    instant.save(_record("left"))
    instant.save(_record("done", InstantState.COMPLETED))
    instant.save(_record("stopped", InstantState.CANCELLED))
    submitted: list[tuple[str, str | None, str | None]] = []

    def submit(kind: str, target: str | None, user: str | None, fn: Any) -> None:
        submitted.append((kind, target, user))

    ctx = SimpleNamespace(settings=SimpleNamespace(uri=None),
                          runner=SimpleNamespace(submit=submit))
    assert resume_at_startup(ctx) == ["left"]  # type: ignore[arg-type]
    assert submitted == [("backup.instant", "left", "kvmops-serve")]

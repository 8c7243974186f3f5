"""SR-IOV VF pools end to end, through the real ``kvmops`` command and libvirt, on a
simulated sysfs tree (this machine has no SR-IOV NIC; ``kvmops dev fake-sriov`` writes
one and ``KVMOPS_SYSFS_ROOT`` points kvmops at it). VMs are defined, never booted: a VF
NIC cannot start here, so every NIC is added with ``--config-only``.

Each test has its own tree, its own state database (``KVMOPS_DB``) and its own PCI bus
(so the VFs of concurrent test sessions never look taken by each other's VMs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kvmops.host.connection import Host
from tests.conftest import CliResult, assert_one_line_error, run_cli

_BUS = 0x10 + os.getpid() % 0x60


@pytest.fixture
def sriov(tmp_path: Path) -> dict[str, Any]:
    """A private tree and database; ``run(*args)`` runs kvmops with them."""
    root = tmp_path / "sys"
    env = {"KVMOPS_SYSFS_ROOT": str(root), "KVMOPS_DB": f"sqlite:///{tmp_path / 'k.db'}"}
    buses = iter(range(_BUS, _BUS + 8))

    def run(*args: str) -> CliResult:
        return run_cli(*args, env=env, timeout=180)

    def fake(pf: str, vfs: int, driver: str, *extra: str) -> None:
        result = run("dev", "fake-sriov", str(root), "--pf", pf, "--vfs", str(vfs),
                     "--driver", driver, "--bus", str(next(buses)), *extra)
        assert result.code == 0, result.stderr

    return {"root": root, "env": env, "run": run, "fake": fake, "db": tmp_path / "k.db"}


def _json(result: CliResult) -> Any:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _vf_state(root: Path, pci: str) -> dict[str, Any]:
    path = root / "devices" / "pci0000:00" / pci / "kvmops-vf-state.json"
    return json.loads(path.read_text()) if path.exists() else {
        "mac": "00:00:00:00:00:00", "vlan": 0, "max_tx_rate": 0}


def _is_reset(state: dict[str, Any]) -> bool:
    return (state["mac"], state["vlan"], state["max_tx_rate"]) == ("00:00:00:00:00:00", 0, 0)


def _validate_domain(host: Host, vm: str, tmp_path: Path) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.fail("virt-xml-validate is missing: install libvirt-clients")
    path = tmp_path / f"{vm}.xml"
    path.write_text(host.lookup(vm).xml(inactive=True))
    check = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_63_vfs_never_over_allocated_under_concurrent_adds(
        sriov: dict[str, Any], fresh_vm: str, host: Host, tmp_path: Path) -> None:
    run: Callable[..., CliResult] = sriov["run"]
    sriov["fake"]("kvtsr0", 63, "ixgbe")
    pfs = _json(run("sriov", "pf", "list", "--json"))
    assert [(p["name"], p["driver"], p["numvfs"], p["totalvfs"]) for p in pfs] == [
        ("kvtsr0", "ixgbe", 63, 63)]
    assert run("sriov", "pool", "create", "vfpool", "--pf", "kvtsr0").code == 0

    def worker(_: int) -> list[CliResult]:
        results = []
        for _attempt in range(70):  # bounded: 63 VFs among three workers
            result = run("vm", "nic", "add", fresh_vm, "--vf-pool", "vfpool", "--vlan", "42",
                         "--rate", "1000", "--config-only", "--json")
            results.append(result)
            if result.code != 0:
                break
        return results

    # Three `vm nic add` at once, each until refused: exactly 63 succeed.
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(worker, range(3)))
    done = [json.loads(r.stdout) for results in runs for r in results if r.code == 0]
    assert len(done) == 63, [r.stderr for results in runs for r in results if r.code]
    assert sorted(n["vf"] for n in done) == list(range(63))
    assert len({n["source"] for n in done}) == len({n["mac"] for n in done}) == 63
    for results in runs:  # each worker ended on the refusal, one line naming PF and count
        assert_one_line_error(results[-1], 5, "no free VF in SR-IOV pool 'vfpool'",
                              "PF 'kvtsr0' has 63 VFs")
    # The 64th, alone.
    assert_one_line_error(run("vm", "nic", "add", fresh_vm, "--vf-pool", "vfpool",
                              "--config-only"),
                          5, "PF 'kvtsr0' has 63 VFs", "63 allocated")

    info = _json(run("sriov", "pool", "info", "vfpool", "--json"))
    assert (info["vfs"], info["allocated"], info["free"]) == (63, 63, 0)
    assert {a["vm"] for a in info["allocations"]} == {fresh_vm}
    assert sorted(a["vf"] for a in info["allocations"]) == list(range(63))
    nics = _json(run("vm", "nic", "list", fresh_vm, "--json"))
    vf_nics = [n for n in nics if n["type"] == "hostdev"]
    assert len(vf_nics) == 63
    assert all(n["pool"] == "vfpool" and n["pf"] == "kvtsr0" and n["vlan"] == "42"
               and n["max_tx_rate"] == 1000 and n["config"] and not n["live"]
               for n in vf_nics)
    for nic in vf_nics:  # the VF carries what the NIC asked for
        state = _vf_state(sriov["root"], nic["source"])
        assert (state["mac"], state["vlan"], state["max_tx_rate"]) == (nic["mac"], 42, 1000)
    _validate_domain(host, fresh_vm, tmp_path)

    # Release by NIC removal: the VF is reset and free again.
    gone = vf_nics[5]
    assert run("vm", "nic", "remove", fresh_vm, gone["mac"], "--config-only").code == 0
    assert _is_reset(_vf_state(sriov["root"], gone["source"]))
    info = _json(run("sriov", "pool", "info", "vfpool", "--json"))
    assert (info["allocated"], info["free"]) == (62, 1)
    assert gone["vf"] not in {a["vf"] for a in info["allocations"]}
    assert_one_line_error(run("sriov", "pool", "delete", "vfpool"), 5,
                          "cannot delete SR-IOV pool 'vfpool'", fresh_vm)

    # Release by undefine: every VF of the VM reset.
    result = run("vm", "undefine", fresh_vm)
    assert result.code == 0, result.stderr
    assert all(_is_reset(_vf_state(sriov["root"], n["source"])) for n in vf_nics)
    info = _json(run("sriov", "pool", "info", "vfpool", "--json"))
    assert (info["allocated"], info["free"]) == (0, 63)
    assert run("sriov", "pool", "delete", "vfpool").code == 0
    assert _json(run("sriov", "pool", "list", "--json")) == []


def test_rates_vlan_spoofchk_trust_and_refusals(sriov: dict[str, Any], fresh_vm: str,
                                                host: Host, tmp_path: Path) -> None:
    run: Callable[..., CliResult] = sriov["run"]
    sriov["fake"]("kvtsrx", 4, "ixgbe")
    sriov["fake"]("kvtsri", 4, "i40e")
    assert run("sriov", "pool", "create", "x520", "--pf", "kvtsrx").code == 0
    assert run("sriov", "pool", "create", "x710", "--pf", "kvtsri").code == 0
    add = ("vm", "nic", "add", fresh_vm, "--config-only")
    assert_one_line_error(run(*add, "--vf-pool", "x520", "--rate", "5"), 2,
                          "VF rate 5 Mbps is outside the ixgbe range 11..10000 Mbps",
                          "PF 'kvtsrx'")
    # i40e would raise 30 to 50 without a word: kvmops refuses it.
    assert_one_line_error(run(*add, "--vf-pool", "x710", "--rate", "30"), 2,
                          "VF rate 30 Mbps is outside the i40e range 50..10000 Mbps",
                          "PF 'kvtsri'")
    assert_one_line_error(run(*add, "--vf-pool", "x710", "--vlan", "4095"), 2, "1..4094")
    assert_one_line_error(run(*add, "--vf-pool", "x710", "--trust", "maybe"), 2, "on or off")
    assert_one_line_error(run(*add, "--vf-pool", "nopool"), 3,
                          "SR-IOV pool 'nopool' not found")
    assert_one_line_error(run(*add, "--vf-pool", "x710", "--network", "default"), 2,
                          "--vf-pool")
    assert_one_line_error(run(*add, "--network", "default", "--rate", "50"), 2, "--vf-pool")
    # Nothing was allocated by a refusal.
    assert _json(run("sriov", "pool", "info", "x710", "--json"))["allocated"] == 0

    nic = _json(run(*add, "--vf-pool", "x710", "--rate", "50", "--vlan", "7", "--spoofchk",
                    "off", "--trust", "on", "--mac", "52:54:00:5e:00:07", "--json"))
    assert (nic["mac"], nic["pf"], nic["vf"], nic["vlan"]) == ("52:54:00:5e:00:07",
                                                               "kvtsri", 0, "7")
    state = _vf_state(sriov["root"], nic["source"])
    assert state == {"mac": "52:54:00:5e:00:07", "vlan": 7, "max_tx_rate": 50,
                     "spoofchk": False, "trust": True}
    nic2 = _json(run(*add, "--vf-pool", "x520", "--rate", "11", "--json"))
    assert _vf_state(sriov["root"], nic2["source"])["max_tx_rate"] == 11
    assert_one_line_error(run(*add, "--vf-pool", "x520", "--mac", nic["mac"]), 4,
                          f"MAC address {nic['mac']} is already used")
    _validate_domain(host, fresh_vm, tmp_path)
    # A copy would share the VFs: refused.
    assert_one_line_error(run("vm", "clone", fresh_vm, f"{fresh_vm}-copy"), 5,
                          f"cannot clone VM '{fresh_vm}'", nic["source"])
    xml = _json(run("vm", "nic", "list", fresh_vm, "--json"))
    assert {n["mac"] for n in xml if n["type"] == "hostdev"} == {nic["mac"], nic2["mac"]}
    # The three attach methods as XML, each valid against libvirt's schema.
    for method, schema in (("interface", None), ("hostdev", None), ("network", "network")):
        result = run("sriov", "pool", "xml", "x520", "--method", method)
        assert result.code == 0, result.stderr
        path = tmp_path / f"{method}.xml"
        path.write_text(result.stdout if schema else
                        "<domain type='kvm'><name>kvmops-test-x</name><memory>65536</memory>"
                        "<os><type arch='x86_64'>hvm</type></os><devices>" + result.stdout
                        + "</devices></domain>")
        check = subprocess.run(["virt-xml-validate", str(path), schema or "domain"],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, result.stdout + check.stderr
    # The CLI's changes are audited in the state database, with the OS user.
    import sqlite3

    with sqlite3.connect(sriov["db"]) as db:
        actions = {row[0] for row in db.execute("SELECT action FROM audit_log")}
    assert {"sriov.pool.create", "vm.nic.add"} <= actions


def test_boot_order_reconcile_after_a_crash_and_a_reboot(
        sriov: dict[str, Any], vm_factory: Callable[..., str], host: Host) -> None:
    run: Callable[..., CliResult] = sriov["run"]
    root = sriov["root"]
    sriov["fake"]("kvtsrb", 8, "ixgbe", "--numvfs", "0")  # a PF at boot: no VFs yet
    assert_one_line_error(run("sriov", "pool", "create", "boot", "--pf", "kvtsrb"), 5,
                          "PF 'kvtsrb' has no VFs", "sriov pf set-vfs kvtsrb")
    assert_one_line_error(run("sriov", "pool", "create", "boot", "--pf", "nopf"), 3,
                          "PF 'nopf' not found")
    assert_one_line_error(run("sriov", "pf", "set-vfs", "kvtsrb", "9"), 2, "use 0..8")
    pf = _json(run("sriov", "pf", "set-vfs", "kvtsrb", "4", "--json"))
    assert (pf["numvfs"], pf["saved_numvfs"]) == (4, 4)
    assert run("sriov", "pool", "create", "boot", "--pf", "kvtsrb").code == 0

    crashed, alive = vm_factory(), vm_factory()
    for vm in (crashed, crashed, alive):
        assert run("vm", "nic", "add", vm, "--vf-pool", "boot", "--vlan", "5",
                   "--config-only").code == 0
    assert_one_line_error(run("sriov", "pf", "set-vfs", "kvtsrb", "2"), 5,
                          "cannot set 2 VFs on PF 'kvtsrb'")
    held = {a["vm"]: a for a in _json(run("sriov", "pool", "info", "boot",
                                          "--json"))["allocations"]}
    assert set(held) == {crashed, alive}
    # A crash: the VM vanished without kvmops (its VFs still configured, the rows still
    # there), and a VF configured by hand that no allocation owns.
    host.lookup(crashed).undefine()
    stray = root / "devices" / "pci0000:00" / f"0000:{_BUS:02x}:10.3" / "kvmops-vf-state.json"
    stray.write_text(json.dumps({"mac": "52:54:00:99:99:99", "vlan": 9, "max_tx_rate": 0,
                                 "spoofchk": True, "trust": False}))
    report = _json(run("sriov", "reconcile", "--json"))
    assert sorted(a["vm"] for a in report["released"]) == [crashed, crashed]
    assert report["reset"] == ["kvtsrb vf3"]
    assert report["reapplied"] == [] and report["numvfs_restored"] == []
    for a in report["released"]:
        assert _is_reset(_vf_state(root, a["pci"]))
    assert _is_reset(_vf_state(root, stray.parent.name))
    info = _json(run("sriov", "pool", "info", "boot", "--json"))
    assert [a["vm"] for a in info["allocations"]] == [alive]
    assert _json(run("sriov", "reconcile", "--json")) == {
        "released": [], "reset": [], "reapplied": [], "numvfs_restored": []}

    # A reboot: the PF comes back without VFs (the kernel forgets sriov_numvfs), the
    # surviving VM's VF with it. reconcile --boot (before libvirtd starts the VMs; it
    # needs no libvirt) makes the VFs again and sets the VF's MAC/VLAN again.
    device = (root / "class" / "net" / "kvtsrb" / "device").resolve()
    for link in device.glob("virtfn*"):
        shutil.rmtree(device.parent / os.readlink(link).split("/")[-1])
        link.unlink()
    (device / "sriov_numvfs").write_text("0\n")
    report = _json(run("sriov", "reconcile", "--boot", "--json", "--connect", "qemu:///nowhere"))
    assert report["numvfs_restored"] == ["kvtsrb 4"]
    assert report["reapplied"] == [f"kvtsrb vf{info['allocations'][0]['vf']}"]
    assert report["released"] == [] and report["reset"] == []
    state = _vf_state(root, info["allocations"][0]["pci"])
    assert (state["mac"], state["vlan"]) == (info["allocations"][0]["mac"], 5)
    assert _json(run("sriov", "reconcile", "--json"))["released"] == []  # the VM holds it


def test_web_page_admin_creates_sets_vfs_and_deletes_viewer_reads(sriov: dict[str, Any],
                                                                   fresh_vm: str,
                                                                   host: Host) -> None:
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect

    from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    sriov["fake"]("kvtsrw", 8, "i40e", "--numvfs", "2")
    users = [("sradmin", "admin", "sriov-admin-1"), ("srview", "viewer", "sriov-view-1")]
    with web_server("kvmops-websriov-", users,
                    extra_env={"KVMOPS_SYSFS_ROOT": str(sriov["root"])}) as server, \
            chromium_page() as page:
        log_in(page, server.url, "sradmin", "sriov-admin-1")
        page.goto(server.url + "/sriov")
        row = page.locator("#sriov-pfs tr[data-pf=kvtsrw]")
        assert row.locator("[data-field=numvfs]").inner_text() == "2"
        assert "50..10000" in row.inner_text()
        row.locator("input[name=count]").fill("6")
        row.locator("button").click()
        expect(page.locator("#sriov-pfs tr[data-pf=kvtsrw] [data-field=numvfs]")).to_have_text(
            "6")
        page.fill("#sriov-create input[name=name]", "webpool")
        page.fill("#sriov-create input[name=pfs]", "kvtsrw, nopf")
        page.click("#sriov-create button[type=submit]")
        page.wait_for_selector("#sriov-error:not([hidden])")
        assert "PF 'nopf' not found" in page.inner_text("#sriov-error")
        page.fill("#sriov-create input[name=pfs]", "kvtsrw")
        page.click("#sriov-create button[type=submit]")
        page.wait_for_selector("#sriov-pools tr[data-pool=webpool]")
        pool = page.locator("#sriov-pools tr[data-pool=webpool]")
        assert pool.locator("[data-field=free]").inner_text() == "6"

        # The VM page's NIC form offers the pool: a VF NIC with a VLAN, then removed.
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{server.url}/vms/{fresh_vm}")
        page.locator("details:has(#nic-add-form) > summary").click()
        form = page.locator("#nic-add-form")
        form.locator("select[name=network] option[value='vf:webpool']").wait_for(
            state="attached")
        form.locator("select[name=network]").select_option("vf:webpool")
        form.locator("input[name=vlan]").fill("7")
        form.locator("button[type=submit]").click()
        vf_row = page.locator("#nic-rows tr", has_text="VLAN 7")
        vf_row.wait_for()
        xml = host.lookup(fresh_vm).xml(inactive=True)
        assert "<interface type='hostdev'" in xml and "<tag id='7'/>" in xml, xml
        vf_row.locator("button[data-remove]").click()
        vf_row.wait_for(state="detached")
        assert "type='hostdev'" not in host.lookup(fresh_vm).xml(inactive=True)
        page.goto(server.url + "/sriov")
        pool = page.locator("#sriov-pools tr[data-pool=webpool]")
        assert pool.locator("[data-field=free]").inner_text() == "6"
        pool.locator("button[data-sriov-delete]").click()
        page.wait_for_selector("#sriov-pools tr[data-pool=webpool]", state="detached")

        page.context.clear_cookies()
        log_in(page, server.url, "srview", "sriov-view-1")
        page.goto(server.url + "/sriov")
        assert page.locator("#sriov-pfs tr[data-pf=kvtsrw]").count() == 1
        assert page.locator("#sriov-create").count() == 0
        assert page.locator("form[data-sriov-vfs]").count() == 0
        assert page.locator("nav a[href='/sriov']").count() == 1

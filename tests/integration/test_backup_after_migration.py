"""Backups after live migration (issue 12: "an incremental backup after migration is
correct or a full with a note"), across the machine's libvirtd (M) and a second host (H2)
on the same file system (shared storage: the image and the repository are reachable by
both hosts' QEMU at the same paths; libvirt's push-mode backup writes into the repository
from the host the VM runs on).

One tiny guest boots; it moves M -> H2 -> M -> H2 (virsh, client-driven, except the
way back, which is kvmops'):

1. full backup on M;
2. -> H2 with ``--copy-storage-all`` into H2's images directory and *without* a
   checkpoint hand-over: libvirt migrates the disk's dirty bitmap with the data (verified
   here), libvirt there has no checkpoint; the backup (``--host h2``) redefines it from
   the repository's copy and takes an incremental that restores to the guest's disk hash;
3. -> M with ``kvmops vm migrate VM --to local --host h2``, which hands the checkpoints
   over: the incremental continues from the handed-over checkpoint (nothing redefined)
   and restores correctly;
4. -> H2 (shared storage: the persistent bitmaps travel in the qcow2) with the bitmaps
   dropped on arrival (a disk that came without them): the backup
   is a full, with a note naming the migration (CLI warning, JSON ``notes``, job record),
   and restores correctly; shut off there, an offline backup through the remote
   connection is refused (qemu-img on this machine cannot tell the host's image from a
   local file at the same path).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from kvmops.host.connection import Host
from kvmops.vm.checkpoints import CHECKPOINT_PREFIX
from tests.conftest import SESSION_PREFIX, CliResult, assert_one_line_error, run_cli
from tests.integration.backup_util import image_hash
from tests.integration.nshost import NsHost, second_host

SHARED = f"{SESSION_PREFIX}bkmshared"  # a pool here over H2's images directory


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=300, check=False)


def _uuid(conn: Host) -> str:
    return etree.fromstring(conn.capabilities().encode()).findtext("host/uuid") or ""


def _cli(*args: str, uri: str | None = None, env: dict[str, str] | None = None
         ) -> CliResult:
    extra = dict(env or {})
    if uri:
        extra["KVMOPS_URI"] = uri
    return run_cli(*args, env=extra)


def _write(vm: str, uri: str, seek_mib: int) -> str:
    """Random MiBs into the guest's /dev/vda at ``seek_mib``; the disk's sha256 after."""
    result = _cli("guest", "exec", vm, "--timeout", "120", "--", "/bin/sh", "-c",
                  f"dd if=/dev/urandom of=/dev/vda bs=1M count=2 seek={seek_mib} "
                  "conv=fsync 2>/dev/null && sync && sha256sum /dev/vda", uri=uri)
    assert result.code == 0, result.stderr
    return result.stdout.split()[0]


def _backup(vm: str, repo: Path, *, uri: str | None = None,
            env: dict[str, str] | None = None, host: str | None = None
            ) -> tuple[dict[str, object], str]:
    args = ["backup", "create", vm, "--repo", str(repo), "--json"]
    if host:
        args += ["--host", host]
    result = _cli(*args, uri=uri, env=env)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def _restored(vm: str, repo: Path, backup_id: str, out: Path) -> str:
    result = run_cli("backup", "restore", vm, "--repo", str(repo), "--at", backup_id,
                     "--to", str(out))
    assert result.code == 0, result.stderr
    return image_hash(out / "vda.qcow2")


def _checkpoints(conn: Host, vm: str) -> list[str]:
    return sorted(c.getName() for c in conn.domain(vm).listAllCheckpoints(0))


def _nodes(h2: NsHost, vm: str) -> list[dict[str, Any]]:
    listed = h2.run_cli("qmp", vm, json.dumps({"execute": "query-named-block-nodes",
                                               "arguments": {"flat": True}}))
    assert listed.code == 0, listed.stderr
    nodes = json.loads(listed.stdout)
    return list(nodes.get("return", nodes) if isinstance(nodes, dict) else nodes)


def _bitmaps(h2: NsHost, vm: str) -> list[str]:
    """The dirty bitmaps of the VM's disks in QEMU on H2."""
    return [b["name"] for node in _nodes(h2, vm) for b in node.get("dirty-bitmaps") or []]


def _drop_bitmaps(h2: NsHost, vm: str) -> list[str]:
    """Remove every kvmops dirty bitmap from the VM's disks in QEMU on H2 (a disk that
    arrived without its bitmaps); the names removed."""
    removed = []
    for node in _nodes(h2, vm):
        for bitmap in node.get("dirty-bitmaps") or []:
            if bitmap["name"].startswith(CHECKPOINT_PREFIX):
                gone = h2.run_cli("qmp", vm, json.dumps(
                    {"execute": "block-dirty-bitmap-remove",
                     "arguments": {"node": node["node-name"], "name": bitmap["name"]}}))
                assert gone.code == 0, gone.stderr
                removed.append(bitmap["name"])
    assert not [b for b in _bitmaps(h2, vm) if b.startswith(CHECKPOINT_PREFIX)]
    return removed


def test_backup_chain_across_migrations(vm_factory: Callable[..., str], host: Host,
                                        repo_dir: Path, tmp_path: Path) -> None:
    try:
        _chain_across_migrations(vm_factory, host, repo_dir, tmp_path)
    finally:
        with contextlib.suppress(libvirt.libvirtError):  # the pool, not its directory
            shared = host.conn.storagePoolLookupByName(SHARED)
            with contextlib.suppress(libvirt.libvirtError):
                shared.destroy()
            shared.undefine()


def _chain_across_migrations(vm_factory: Callable[..., str], host: Host, repo_dir: Path,
                             tmp_path: Path) -> None:
    vm = vm_factory(start=True)
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'kvmops.db'}"}
    machine_uuid = _uuid(host)
    with second_host(f"{SESSION_PREFIX}bkm") as h2, h2.connect() as there:
        added = run_cli("host", "add", "h2", h2.uri, env=env)
        assert added.code == 0, added.stderr
        h2_uuid = _uuid(there)
        assert h2_uuid and machine_uuid and h2_uuid != machine_uuid

        # 1. A full on the machine; the manifest records the host.
        full, _ = _backup(vm, repo_dir)
        assert full["type"] == "full" and full["host_uuid"] == machine_uuid

        # 2. To H2 copying the disk, without a hand-over: no checkpoint there; the bitmap
        # came with the data.
        source = host.domain(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        old = str(etree.fromstring(source.encode()).xpath(
            "string(devices/disk[target/@dev='vda']/source/@file)"))
        assert old.endswith(".qcow2")
        new = f"{h2.images_dir}/{vm}-vda.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", new, "64M"], check=True)
        dest_xml = tmp_path / "dest.xml"
        dest_xml.write_text(source.replace(old, new))
        moved = _virsh(host.uri, "migrate", "--live", "--copy-storage-all", "--persistent",
                       "--undefinesource", "--xml", str(dest_xml), "--persistent-xml",
                       str(dest_xml), vm, h2.uri, f"tcp://{h2.tcp_address}")
        assert moved.returncode == 0, (moved.stderr, h2.log_tail())
        assert _checkpoints(there, vm) == []
        assert full["checkpoint"] in _bitmaps(h2, vm)
        assert etree.fromstring(there.domain(vm).XMLDesc(0).encode()).xpath(
            "string(devices/disk[target/@dev='vda']/source/@file)") == new
        digest = _write(vm, h2.uri, 4)
        inc1, warned = _backup(vm, repo_dir, env=env, host="h2")
        assert inc1["type"] == "incremental" and inc1["parent"] == full["id"], inc1
        assert inc1["host_uuid"] == h2_uuid and inc1["host"] == h2.netns
        notes = "\n".join(inc1["notes"])  # type: ignore[arg-type]
        assert "redefined it from the repository" in notes
        assert f"migrated from host {host.hostname()} to {h2.netns}" in notes
        assert "continues the chain" in notes and "continues the chain" in warned
        assert _restored(vm, repo_dir, str(inc1["id"]), tmp_path / "r1") == digest

        # 3. Back to the machine with 'kvmops vm migrate' (shared storage: a pool over
        # H2's images directory here too), which hands the checkpoints over.
        pool = run_cli("pool", "create", SHARED, "--type", "dir", "--target",
                       h2.images_dir, env=env)
        assert pool.code == 0, pool.stderr
        back = run_cli("vm", "migrate", vm, "--to", "local", "--host", "h2", "--json",
                       env=env, timeout=600)
        assert back.code == 0, (back.stderr, h2.log_tail())
        handed = [n for n in json.loads(back.stdout)["notes"]
                  if "checkpoints redefined on 'local'" in n]
        assert handed and str(inc1["checkpoint"]) in handed[0]
        assert vm not in [d.name for d in there.all_domains()]
        assert inc1["checkpoint"] in _checkpoints(host, vm)
        digest = _write(vm, host.uri, 20)
        inc2, _ = _backup(vm, repo_dir)
        assert inc2["type"] == "incremental" and inc2["parent"] == inc1["id"], inc2
        notes = "\n".join(inc2["notes"])  # type: ignore[arg-type]
        assert "redefined" not in notes  # the hand-over's checkpoint was used
        assert f"migrated from host {h2.netns} to {host.hostname()}" in notes
        assert _restored(vm, repo_dir, str(inc2["id"]), tmp_path / "r2") == digest

        # 4. To H2 again; the disk arrives without its bitmaps: a full with the note.
        moved = _virsh(host.uri, "migrate", "--live", "--unsafe", "--persistent",
                       "--undefinesource", vm, h2.uri)
        assert moved.returncode == 0, (moved.stderr, h2.log_tail())
        assert inc2["checkpoint"] in _drop_bitmaps(h2, vm)
        digest = _write(vm, h2.uri, 40)
        full2, warned = _backup(vm, repo_dir, env=env, host="h2")
        assert full2["type"] == "full" and full2["parent"] is None, full2
        notes = "\n".join(full2["notes"])  # type: ignore[arg-type]
        assert "cannot be trusted" in notes
        note = (f"migrated from host {host.hostname()} to {h2.netns} since backup "
                f"{inc2['id']} and the change tracking of that backup did not come along")
        assert note in notes and note in " ".join(warned.split())
        assert _restored(vm, repo_dir, str(full2["id"]), tmp_path / "r3") == digest
        jobs = json.loads(run_cli("job", "list", "--json", env=env).stdout)
        recorded = [j for j in jobs if j.get("kind") == "backup.create"
                    and (j.get("result") or {}).get("id") == full2["id"]]
        assert recorded and note in "\n".join(recorded[0]["result"]["notes"])
        # The chain goes on from the full on H2.
        digest = _write(vm, h2.uri, 50)
        inc3, _ = _backup(vm, repo_dir, env=env, host="h2")
        assert inc3["type"] == "incremental" and inc3["parent"] == full2["id"]
        assert _restored(vm, repo_dir, str(inc3["id"]), tmp_path / "r4") == digest
        assert vm not in [d.name for d in host.all_domains()]
        # Shut off on another host: no offline backup (qemu-img here cannot tell that
        # host's image from a file of the same path here).
        stopped = _cli("vm", "destroy", vm, "--host", "h2", env=env)
        assert stopped.code == 0, stopped.stderr
        assert_one_line_error(
            _cli("backup", "create", vm, "--repo", str(repo_dir), "--host", "h2", env=env),
            6, "is shut off", "qemu-img on this machine", "start the VM")

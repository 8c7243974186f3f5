"""qemu+ssh to a second host (issue 12: "qemu+ssh is tested against an sshd started in
the namespace with a generated key"): ``dev second-host up --ssh`` starts an sshd in the
second host's network and mount namespaces (so libvirt's ssh helper reaches *its*
libvirtd socket), with a generated host key pinned through an ssh client drop-in and a
generated ed25519 client key; ``host add`` over that URI, ``host list``/``info``,
``vm list`` over it, keepalive and reconnect of the pooled connection, ``host remove``;
``down`` removes the sshd and the drop-in. No guest boots: a defined VM is enough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from kvmops.devguest.build import GuestImage
from kvmops.host.remote import Pool
from kvmops.testing import netns, secondhost
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.nshost import SECOND_HOST_INDEX

N = SECOND_HOST_INDEX
ADDRESS = f"10.250.{N}.2"
UP = ("dev", "second-host", "up", "--index", str(N))


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _sessions(sshd: int) -> list[int]:
    """The sshd processes serving a connection (children of the listener)."""
    out = subprocess.run(["pgrep", "-P", str(sshd)], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return [int(pid) for pid in out.split()]


def test_qemu_ssh_second_host(tiny_guest: GuestImage, tmp_path: Path) -> None:
    name = f"{SESSION_PREFIX}h2ssh"
    vm = f"{SESSION_PREFIX}h2sshvm"
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'hosts.db'}"}
    try:
        started = run_cli(*UP, "--name", name, "--ssh")
        assert started.code == 0, started.stderr
        info = json.loads(run_cli(*UP, "--name", name, "--ssh", "--json").stdout)
        uri = info["ssh_uri"]
        assert started.stdout.splitlines()[-1] == uri
        key = Path(info["ssh_key"])
        assert uri == f"qemu+ssh://root@{ADDRESS}/system?keyfile={key}"
        assert info["started"] is False  # idempotent: the same libvirtd and sshd
        host = secondhost.load(name)
        assert host is not None and host.ssh and host.sshd_pid
        sshd = host.sshd_pid
        assert sshd in netns.netns_pids(name)
        # In libvirtd's mount namespace (its /run/libvirt), listening on its address only.
        assert (os.readlink(f"/proc/{sshd}/ns/mnt")
                == os.readlink(f"/proc/{host.libvirtd_pid}/ns/mnt"))
        assert os.readlink(f"/proc/{sshd}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        listening = host.run("ss", "-Hltn", "sport", "= :22").stdout.split()
        assert f"{ADDRESS}:22" in listening and "0.0.0.0:22" not in listening
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        known = Path(info["known_hosts"]).read_text()
        assert known.startswith(f"{ADDRESS} ssh-ed25519 ")
        drop_in = secondhost.ssh_client_config(name)
        assert str(Path(info["known_hosts"])) in drop_in.read_text()

        # The host key is verified: a wrong key in known_hosts is refused.
        good = Path(info["known_hosts"]).read_text()
        other_key = " ".join(key.with_name("client_ed25519.pub").read_text().split()[:2])
        Path(info["known_hosts"]).write_text(f"{ADDRESS} {other_key}\n")
        refused = _virsh(uri, "hostname")
        assert refused.returncode != 0 and "verification failed" in refused.stderr, refused
        Path(info["known_hosts"]).write_text(good)
        assert _virsh(uri, "hostname").stdout.strip() == name
        # Without the client key there is no login.
        keyless = _virsh(uri.split("?")[0], "hostname")
        assert keyless.returncode != 0

        created = run_cli(
            "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M",
            "--images-dir", info["images_dir"], env={"KVMOPS_URI": uri})
        assert created.code == 0, created.stderr

        added = run_cli("host", "add", "h2ssh", uri, "--json", env=env)
        assert added.code == 0, added.stderr
        entry = json.loads(added.stdout)
        assert entry["reachable"] is True and entry["hostname"] == name
        assert entry["vms_defined"] == 1
        hosts = {h["name"]: h for h in json.loads(
            run_cli("host", "list", "--json", env=env).stdout)}
        assert hosts["h2ssh"]["uri"] == uri and hosts["h2ssh"]["reachable"] is True
        assert (hosts["h2ssh"]["vms_defined"], hosts["h2ssh"]["vms_running"]) == (1, 0)
        shown = json.loads(run_cli("host", "info", "h2ssh", "--json", env=env).stdout)
        assert shown["reachable"] is True and shown["libvirt_version"]
        assert shown["accelerator"] in ("kvm", "tcg") and shown["memory_total"] > 0
        listed = run_cli("vm", "list", "--json", env={**env, "KVMOPS_URI": uri})
        assert listed.code == 0, listed.stderr
        assert [v["name"] for v in json.loads(listed.stdout)] == [vm]
        by_name = run_cli("vm", "list", "--host", "h2ssh", "--json", env=env)
        assert by_name.code == 0, by_name.stderr
        assert [v["name"] for v in json.loads(by_name.stdout)] == [vm]
        info = run_cli("vm", "info", vm, "--host", "h2ssh", "--json", env=env)
        assert info.code == 0, info.stderr
        assert json.loads(info.stdout)["name"] == vm

        # Pooled connections over ssh: keepalive on, and a dropped ssh session (the sshd
        # child serving it killed) is noticed and the connection opened again.
        pool = Pool()
        with pool.connection(uri) as conn:
            assert conn.alive() and conn.conn.setKeepAlive(5, 3) == 0
            first = conn
        sessions = _sessions(sshd)
        assert sessions, "the pooled connection holds an ssh session"
        for pid in sessions:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while first.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not first.alive()
        with pool.connection(uri) as conn:
            assert conn is not first and conn.alive()
            assert [d.name for d in conn.all_domains()] == [vm]
        pool.drop(uri)

        removed = run_cli("host", "remove", "h2ssh", env=env)
        assert removed.code == 0, removed.stderr
        assert_one_line_error(run_cli("host", "info", "h2ssh", env=env), 3, "'h2ssh'")
    finally:
        down = run_cli("dev", "second-host", "down", "--name", name)
    assert down.code == 0, down.stderr
    assert not netns.alive(sshd)
    assert not drop_in.exists()
    assert not secondhost.state_dir(name).exists()

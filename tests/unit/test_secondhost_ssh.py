"""The second host's sshd for qemu+ssh (kvmops.testing.secondhost.start_ssh): its config
and URI, without starting anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kvmops.services.hosts import validate_uri
from kvmops.testing import secondhost


def _host(ssh: bool) -> secondhost.NamespacedHost:
    return secondhost.NamespacedHost(
        netns="kvmops-h2", state=Path("/run/kvmops/second-hosts/kvmops-h2"),
        host_veth="kvh2-12345678", tcp_address="10.250.3.2", host_address="10.250.3.1",
        ssh=ssh)


def test_ssh_uri_only_once_sshd_runs_and_passes_host_add_checks() -> None:
    assert _host(False).ssh_uri == ""
    assert _host(False).summary()["ssh_uri"] is None
    uri = _host(True).ssh_uri
    assert uri == ("qemu+ssh://root@10.250.3.2/system?keyfile="
                   "/run/kvmops/second-hosts/kvmops-h2/ssh/client_ed25519")
    assert validate_uri(uri) == uri
    assert _host(True).uri == "qemu+tcp://10.250.3.2/system"  # the TCP URI is unchanged


def test_sshd_config_key_only_on_its_address() -> None:
    lines = secondhost._sshd_config(_host(True)).splitlines()
    assert "ListenAddress 10.250.3.2:22" in lines
    assert [line for line in lines if line.startswith("ListenAddress")] == [
        "ListenAddress 10.250.3.2:22"]
    for setting in ("PasswordAuthentication no", "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password", "AllowTcpForwarding no",
                    "PermitTunnel no", "AllowUsers root"):
        assert setting in lines
    assert ("AuthorizedKeysFile /run/kvmops/second-hosts/kvmops-h2/ssh/authorized_keys"
            in lines)


def test_record_round_trip_keeps_ssh(tmp_path: Path) -> None:
    host = dataclasses.replace(_host(True), state=tmp_path / "kvmops-h2")
    host.state.mkdir()
    secondhost._write_record(host)

    assert json.loads((host.state / secondhost.RECORD).read_text())["ssh"] is True
    assert secondhost.ssh_client_config("kvmops-h2") == Path(
        "/etc/ssh/ssh_config.d/kvmops-h2.conf")

"""kvmops.testing.secondhost's pure parts: names, the machine-side veth name, where state
and images go, and the libvirt .conf edit (libvirt takes a key's first line, so an
earlier one must go)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmops.errors import ValidationError
from kvmops.testing import secondhost
from kvmops.testing.netns import NSHOST_ROOT


@pytest.mark.parametrize("name", ["kvmops-h2", "kvmops-test-1a2b-h2", "kvmops-a"])
def test_valid_names(name: str) -> None:
    assert secondhost.check_name(name) == name


@pytest.mark.parametrize("name", ["h2", "kvmops-", "kvmops-H2", "kvmops-a b", "kvmops-a/b",
                                  "kvmops-" + "a" * 42, "kvmops-a-", "../kvmops-x"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid second host name"):
        secondhost.check_name(name)


def test_veth_names_fit_and_tests_get_the_test_bridge_prefix() -> None:
    dev = secondhost.host_veth_for("kvmops-h2")
    test = secondhost.host_veth_for("kvmops-test-1a2b-h2")
    assert dev.startswith("kvh2-") and test.startswith("kvt2-")
    assert len(dev) <= 15 and len(test) <= 15
    assert secondhost.host_veth_for("kvmops-h3") != dev


def test_test_hosts_live_where_clean_test_looks() -> None:
    assert secondhost.state_dir("kvmops-test-1-h2") == NSHOST_ROOT / "kvmops-test-1-h2"
    assert secondhost.images_dir_for("kvmops-test-1-h2").parent == secondhost.TEST_IMAGES_ROOT
    assert secondhost.state_dir("kvmops-h2") == Path("/run/kvmops/second-hosts/kvmops-h2")
    assert secondhost.images_dir_for("kvmops-h2") == Path("/var/lib/kvmops/second-hosts/kvmops-h2")


def test_set_conf_replaces_earlier_lines(tmp_path: Path) -> None:
    conf = tmp_path / "libvirtd.conf"
    conf.write_text('#listen_tcp = 1\nlisten_tcp = 0\nauth_tcp = "sasl"\nmax_clients = 5\n')
    secondhost._set_conf(conf, {"listen_tcp": "1", "auth_tcp": '"none"'})
    lines = conf.read_text().splitlines()
    assert "listen_tcp = 0" not in lines and 'auth_tcp = "sasl"' not in lines
    assert lines.count("listen_tcp = 1") == 1 and 'auth_tcp = "none"' in lines
    assert "#listen_tcp = 1" in lines and "max_clients = 5" in lines


def test_summary_of_a_second_host() -> None:
    host = secondhost.NamespacedHost(
        netns="kvmops-h2", state=Path("/run/kvmops/second-hosts/kvmops-h2"),
        host_veth="kvh2-x", tcp_address=secondhost.ADDRESS, images_dir="/i")
    info = host.summary()
    assert info["uri"] == "qemu+tcp://10.250.0.2/system"
    assert info["unix_uri"].endswith("/kvmops-h2/run/libvirt-sock")
    assert (info["netns"], info["address"], info["images_dir"]) == ("kvmops-h2", "10.250.0.2",
                                                                     "/i")
    upstream = secondhost.NamespacedHost(netns="kvmops-test-n", state=Path("/s"),
                                         upstream="kvmops-test-n-up")
    assert upstream.uri == upstream.unix_uri


def test_guard_lets_qemus_user_through(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "nobody"\nuser = "+4242"\n')
    assert secondhost._qemu_uids(conf) == [0, 4242]
    conf.write_text('user = "root"\n')
    assert secondhost._qemu_uids(conf) == [0]

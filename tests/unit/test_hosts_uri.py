"""Host URIs (kvmops.services.hosts.validate_uri): the qemu transports only, and no part
a shell or ssh could take as syntax or as an option; host names likewise."""

from __future__ import annotations

import pytest

from kvmops.errors import ValidationError
from kvmops.services.hosts import validate_name, validate_uri


@pytest.mark.parametrize("uri", [
    "qemu:///system",
    "qemu+tcp://10.250.0.2/system",
    "qemu+tcp://10.250.0.2:16509/system",
    "qemu+tls://kvm-07.example.org/system",
    "qemu+ssh://root@kvm-07.example.org/system",
    "qemu+ssh://ops_user@10.0.0.5:2222/system?keyfile=/root/.ssh/id_ed25519",
    "qemu+ssh://h1/system?keyfile=/root/.ssh/k&no_tty=1&known_hosts=/root/.ssh/kh",
    "qemu+unix:///system",
    "qemu+unix:///system?socket=/run/kvmops/second-hosts/x/run/libvirt-sock",
    "qemu+tcp://[fd00:250::2]/system",
    "qemu+tls://h1/system?pkipath=/etc/pki/kvmops",
])
def test_accepted(uri: str) -> None:
    assert validate_uri(uri) == uri


@pytest.mark.parametrize(("uri", "part"), [
    ("", "scheme"),
    ("10.250.0.2", "scheme"),
    ("xen+ssh://h1/system", "scheme 'xen+ssh'"),
    ("lxc:///system", "scheme 'lxc'"),
    ("qemu+ext://h1/system?command=/bin/sh", "scheme 'qemu+ext'"),
    ("qemu+ssh://-oProxyCommand=touch%20x/system", "not an option"),
    ("qemu+ssh://-oProxyCommand=id/system", "not an option"),
    ("qemu+ssh://h1;id/system", "host"),
    ("qemu+ssh://h1/system?netcat=/tmp/evil", "parameter 'netcat'"),
    ("qemu+ssh://h1/system?command=id", "parameter 'command'"),
    ("qemu+ssh://h1/system?proxy=native", "parameter 'proxy'"),
    ("qemu+ssh://h1/system?keyfile=../k", "absolute path"),
    ("qemu+ssh://h1/system?keyfile=/root/$(id)", "absolute path"),
    ("qemu+ssh://h1/system?keyfile=/a&keyfile=/b", "twice"),
    ("qemu+ssh://h1/system?sshauth=-x", "value of 'sshauth'"),
    ("qemu+ssh://h1/system?mode=`id`", "value of 'mode'"),
    ("qemu+ssh://-root@h1/system", "user"),
    ("qemu+ssh://user:pw@h1/system", "password"),
    ("qemu+tcp://root@h1/system", "user name with qemu+tcp"),
    ("qemu+tcp://h1/system#x", "fragment"),
    ("qemu+tcp://h1/system x", "spaces"),
    ("qemu+tcp://h1/system\n", "spaces"),
    ("qemu+tcp://h1/", "path"),
    ("qemu+tcp://h1/etc/passwd", "path"),
    ("qemu+tcp:///system", "needs a host"),
    ("qemu://h1/system", "names no host"),
    ("qemu+unix://h1/system", "names no host"),
    ("qemu:///system?socket=/x", "no parameters"),
    ("qemu+tcp://h1:0/system", "port"),
    ("qemu+tcp://h1:99999/system", "Port"),
    ("qemu+tcp://[fe80::1%25eth0]/system", "host"),
])
def test_refused_naming_the_part(uri: str, part: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_uri(uri)
    assert part.lower() in caught.value.message.lower()
    assert caught.value.hint and "qemu+ssh://" in caught.value.hint


@pytest.mark.parametrize("name", ["h2", "kvm-07", "rack1.node_3", "A" * 64])
def test_names_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-h", ".h", "h 2", "h/2", "h;id", "A" * 65])
def test_names_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        validate_name(name)

"""Open vSwitch through ``ovs-vsctl``: bridges (on the datapath this host can run), who
made them, and the VLAN settings libvirt gives a VM's port.

Two datapaths exist. The kernel one (``system``) needs the ``openvswitch`` kernel module,
whose Generic Netlink family ``ovs_datapath`` ovs-vswitchd talks to; where the kernel has
none (containers, kernels built without it, as on kvmops' own CI host) ovs-vswitchd can
still switch in user space: bridges with ``datapath_type=netdev``, each port read and
written through a packet socket. :func:`kernel_datapath` asks the kernel for that family
(the same test ovs-vswitchd makes), and :func:`default_datapath` picks ``netdev`` when it
is missing. A bridge kvmops creates for a network carries ``external_ids:kvmops-network``
so that deleting the network removes only a bridge kvmops made for it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

from kvmops.errors import (
    AlreadyExistsError,
    HostUnavailableError,
    HypervisorError,
    UnsupportedError,
    ValidationError,
)

DATAPATHS = ("system", "netdev")
#: The external id that marks a bridge kvmops created, with the network's name.
OWNER_KEY = "kvmops-network"
OVS_DATAPATH_FAMILY = "ovs_datapath"
_TIMEOUT = 10  # seconds ovs-vsctl waits for ovsdb-server / ovs-vswitchd
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")

# Generic Netlink: ask the controller for a family by name (CTRL_CMD_GETFAMILY).
_NETLINK_GENERIC = 16
_GENL_ID_CTRL = 0x10
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_NAME = 2


def family_request(name: str, seq: int = 1) -> bytes:
    """The netlink message asking the Generic Netlink controller for family ``name``."""
    payload = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(payload), _CTRL_ATTR_FAMILY_NAME) + payload
    attr += b"\0" * (-len(attr) % 4)
    genl = struct.pack("=BBH", _CTRL_CMD_GETFAMILY, 1, 0)
    return struct.pack("=IHHII", 16 + len(genl) + len(attr), _GENL_ID_CTRL, _NLM_F_REQUEST,
                       seq, 0) + genl + attr


def family_answer(data: bytes) -> bool:
    """Does the controller's answer describe the family (True) or say it does not exist
    (False, ENOENT)? Any other error is raised as OSError."""
    if len(data) < 16:
        raise OSError(errno.EPROTO, "short netlink answer")
    _length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data)
    if kind == _GENL_ID_CTRL:
        return True
    if kind == _NLMSG_ERROR and len(data) >= 20:
        (code,) = struct.unpack_from("=i", data, 16)
        if code == -errno.ENOENT:
            return False
        raise OSError(-code, f"netlink error {code}")
    raise OSError(errno.EPROTO, f"unexpected netlink message type {kind}")


def kernel_datapath() -> bool:
    """Has the running kernel Open vSwitch's datapath (the ``ovs_datapath`` Generic
    Netlink family, there once the ``openvswitch`` module is loaded or built in)?"""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            sock.send(family_request(OVS_DATAPATH_FAMILY))
            return family_answer(sock.recv(65536))
    except OSError:
        return False  # no Generic Netlink at all: certainly no kernel datapath


def default_datapath() -> str:
    """``system`` where the kernel has the datapath, else ``netdev`` (user space)."""
    return "system" if kernel_datapath() else "netdev"


def check_bridge_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValidationError(f"invalid Open vSwitch bridge name '{name}'",
                              hint="use 1-15 letters, digits, '_', '.' or '-', not starting "
                                   "with '.' or '-'")
    return name


def _tool() -> str:
    tool = shutil.which("ovs-vsctl")
    if tool is None:
        raise UnsupportedError("Open vSwitch is not installed (no ovs-vsctl)",
                               hint="install openvswitch-switch (scripts/setup-host.sh "
                                    "does, and starts it)")
    return tool


def vsctl(*args: str, what: str) -> str:
    """Run ``ovs-vsctl ARGS`` (bounded); its stdout. One-line errors: Open vSwitch not
    running is HostUnavailableError, any other failure HypervisorError."""
    try:
        result = subprocess.run([_tool(), f"--timeout={_TIMEOUT}", *args], capture_output=True,
                                text=True, timeout=_TIMEOUT + 5, check=False)
    except subprocess.TimeoutExpired:
        raise HostUnavailableError(f"{what}: Open vSwitch did not answer within "
                                   f"{_TIMEOUT + 5}s",
                                   hint="is ovs-vswitchd running? (ovs-vsctl show)") from None
    if result.returncode != 0:
        text = result.stderr.strip() or f"ovs-vsctl exited with {result.returncode}"
        if "database connection failed" in text or "db.sock" in text:
            raise HostUnavailableError(f"{what}: Open vSwitch's database does not answer "
                                       f"({text})",
                                       hint="start ovsdb-server and ovs-vswitchd (see "
                                            "docs/concepts/networks.md)")
        raise HypervisorError(f"{what}: {text}")
    return result.stdout


def vswitchd_answers() -> bool:
    """Does ovs-vswitchd answer on its control socket (ovsdb-server alone answers
    ovs-vsctl's reads, but no bridge works without the switch)?"""
    tool = shutil.which("ovs-appctl")
    if tool is None:
        return False
    try:
        result = subprocess.run([tool, "--timeout=5", "-t", "ovs-vswitchd", "version"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def bridges() -> list[str]:
    return vsctl("list-br", what="listing Open vSwitch bridges").split()


def bridge_datapath(name: str) -> str:
    """The bridge's ``datapath_type`` (``system`` when unset, as ovs-vswitchd reads it)."""
    value = vsctl("get", "bridge", check_bridge_name(name), "datapath_type",
                  what=f"reading Open vSwitch bridge '{name}'").strip().strip('"')
    return value or "system"


def check_datapath(name: str) -> None:
    """Refuse bridge ``name`` when it is on the kernel datapath and the kernel has none:
    ovs-vswitchd keeps such a bridge in its database, but it passes no frame."""
    if bridge_datapath(name) == "system" and not kernel_datapath():
        raise UnsupportedError(
            f"Open vSwitch bridge '{name}' is on the kernel datapath, which this kernel lacks "
            "(no 'ovs_datapath' netlink family): it would pass no traffic",
            hint=f"move it to the user-space datapath ('ovs-vsctl set bridge {name} "
                 "datapath_type=netdev'), or load the openvswitch module")


def bridge_owner(name: str) -> str | None:
    """The network kvmops created bridge ``name`` for; None for a bridge it did not."""
    value = vsctl("br-get-external-id", check_bridge_name(name), OWNER_KEY,
                  what=f"reading Open vSwitch bridge '{name}'").strip()
    return value or None


def bridge_ports(name: str) -> list[str]:
    return vsctl("list-ports", check_bridge_name(name),
                 what=f"listing the ports of Open vSwitch bridge '{name}'").split()


def add_bridge(name: str, *, datapath: str | None = None, owner: str | None = None) -> str:
    """Create bridge ``name`` on ``datapath`` (default: :func:`default_datapath`), marked
    as made for network ``owner``; the datapath used. The kernel datapath is refused in
    one line where the kernel has none (ovs-vswitchd would make a bridge that passes
    nothing)."""
    check_bridge_name(name)
    if datapath is None:
        datapath = default_datapath()
    if datapath not in DATAPATHS:
        raise ValidationError(f"unknown Open vSwitch datapath '{datapath}'",
                              hint=f"use one of {', '.join(DATAPATHS)}")
    if datapath == "system" and not kernel_datapath():
        raise UnsupportedError(
            "this kernel has no Open vSwitch datapath (no 'ovs_datapath' netlink family: "
            "the openvswitch module is not loaded)",
            hint="load it (modprobe openvswitch), or use the user-space datapath "
                 "(--datapath netdev)")
    if name in bridges():
        raise AlreadyExistsError(f"Open vSwitch bridge '{name}' already exists",
                                 hint="name it without --create-bridge to use it, or choose "
                                      "another name")
    args = ["add-br", name, "--", "set", "bridge", name, f"datapath_type={datapath}"]
    if owner is not None:
        args += ["--", "br-set-external-id", name, OWNER_KEY, owner]
    vsctl(*args, what=f"creating Open vSwitch bridge '{name}'")
    return datapath


def delete_bridge(name: str) -> None:
    vsctl("--if-exists", "del-br", check_bridge_name(name),
          what=f"deleting Open vSwitch bridge '{name}'")


def remove_owned_bridge(name: str, owner: str) -> bool:
    """Delete bridge ``name`` if kvmops created it for network ``owner`` and no port is
    left on it; whether it was deleted. Never fails (a bridge left is said by False)."""
    with contextlib.suppress(HostUnavailableError, HypervisorError, UnsupportedError,
                             ValidationError):
        if name in bridges() and bridge_owner(name) == owner and not bridge_ports(name):
            delete_bridge(name)
            return True
    return False


@dataclass(frozen=True)
class PortVlan:
    """What Open vSwitch does with VLANs on one port (libvirt sets it from ``<vlan>``)."""

    tag: int | None  # the access tag; None: none
    trunks: tuple[int, ...]  # the trunk's tags; empty: all (or an access port)
    mode: str | None  # vlan_mode: access, trunk, native-tagged, native-untagged; None: default


def _value(cell: object) -> object:
    """One column of ``ovs-vsctl --format=json``: ["set", [...]] is a set, else a value."""
    if isinstance(cell, list) and cell and cell[0] == "set":
        return list(cell[1])
    return cell


def port_vlan(port: str) -> PortVlan:
    """The VLAN columns of port ``port`` (e.g. a VM's tap ``vnet3``)."""
    check_bridge_name(port)  # a port name is an interface name, as a bridge's
    out = vsctl("--format=json", "--columns=tag,trunks,vlan_mode", "list", "port", port,
                what=f"reading Open vSwitch port '{port}'")
    row = json.loads(out)["data"][0]
    tag, trunks, mode = (_value(cell) for cell in row)
    return PortVlan(tag=tag if isinstance(tag, int) else None,
                    trunks=tuple(sorted(int(t) for t in trunks)) if isinstance(trunks, list)
                    else (int(trunks),) if isinstance(trunks, int) else (),
                    mode=mode if isinstance(mode, str) else None)

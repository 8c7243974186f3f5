"""kvmops.host.ovs without Open vSwitch: the Generic Netlink question that tells whether
the kernel has OVS's datapath, the datapath choice, and the refusals made before
``ovs-vsctl`` runs."""

from __future__ import annotations

import errno
import struct

import pytest

from kvmops.errors import UnsupportedError, ValidationError
from kvmops.host import ovs


def test_family_request_asks_the_controller_for_the_family_by_name() -> None:
    msg = ovs.family_request("ovs_datapath", seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 0x10, 1, 7, 0)
    assert len(msg) % 4 == 0
    cmd, _version, _ = struct.unpack_from("=BBH", msg, 16)
    assert cmd == 3  # CTRL_CMD_GETFAMILY
    attr_len, attr_type = struct.unpack_from("=HH", msg, 20)
    assert attr_type == 2  # CTRL_ATTR_FAMILY_NAME
    assert msg[24:20 + attr_len] == b"ovs_datapath\0"


def _error(code: int) -> bytes:
    return struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", code) + b"\0" * 16


def test_family_answer_reads_found_missing_and_other_errors() -> None:
    assert ovs.family_answer(struct.pack("=IHHII", 20, 0x10, 0, 1, 0) + b"\3\2\0\0") is True
    assert ovs.family_answer(_error(-errno.ENOENT)) is False
    with pytest.raises(OSError):
        ovs.family_answer(_error(-errno.EPERM))
    with pytest.raises(OSError):
        ovs.family_answer(b"\0" * 8)


def test_default_datapath_follows_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: False)
    assert ovs.default_datapath() == "netdev"
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: True)
    assert ovs.default_datapath() == "system"


def test_kernel_datapath_without_a_kernel_module_is_refused(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: False)

    def never(*args: str, what: str) -> str:
        raise AssertionError(f"ovs-vsctl ran: {args}")

    monkeypatch.setattr(ovs, "vsctl", never)
    with pytest.raises(UnsupportedError, match=r"no Open vSwitch datapath.*--datapath netdev"):
        ovs.add_bridge("kvtbr0", datapath="system")
    with pytest.raises(ValidationError, match="unknown Open vSwitch datapath 'dpdk'"):
        ovs.add_bridge("kvtbr0", datapath="dpdk")


@pytest.mark.parametrize("name", ["", "-x", ".x", "a/b", "a" * 16, "br 0", "br:0"])
def test_bad_bridge_names_never_reach_ovs_vsctl(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid Open vSwitch bridge name"):
        ovs.add_bridge(name, datapath="netdev")
    with pytest.raises(ValidationError):
        ovs.delete_bridge(name)


def test_port_vlan_reads_ovs_vsctl_json(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "vnet1": '{"data":[[10,["set",[]],["set",[]]]],"headings":["tag","trunks","vlan_mode"]}',
        "vnet2": '{"data":[[["set",[]],["set",[10,20]],"native-untagged"]],"headings":[]}',
        "vnet3": '{"data":[[["set",[]],30,["set",[]]]],"headings":[]}',
    }
    monkeypatch.setattr(ovs, "vsctl", lambda *args, what: answers[args[-1]])
    assert ovs.port_vlan("vnet1") == ovs.PortVlan(tag=10, trunks=(), mode=None)
    assert ovs.port_vlan("vnet2") == ovs.PortVlan(tag=None, trunks=(10, 20),
                                                  mode="native-untagged")
    assert ovs.port_vlan("vnet3") == ovs.PortVlan(tag=None, trunks=(30,), mode=None)


def test_a_bridge_on_a_missing_kernel_datapath_is_refused(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(ovs, "bridge_datapath", lambda name: "system")
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: False)
    with pytest.raises(UnsupportedError, match="'br0' is on the kernel datapath"):
        ovs.check_datapath("br0")
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: True)
    ovs.check_datapath("br0")
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: False)
    monkeypatch.setattr(ovs, "bridge_datapath", lambda name: "netdev")
    ovs.check_datapath("br0")


def test_doctor_says_whether_open_vswitch_runs_and_on_which_datapath(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from kvmops.errors import HostUnavailableError
    from kvmops.services import doctor

    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = doctor.check_openvswitch()
    assert (missing.status, "openvswitch-switch" in (missing.hint or "")) == ("warn", True)

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    def down() -> list[str]:
        raise HostUnavailableError("Open vSwitch's database does not answer")

    monkeypatch.setattr(ovs, "bridges", down)
    assert doctor.check_openvswitch().status == "warn"
    monkeypatch.setattr(ovs, "bridges", lambda: ["br0"])
    monkeypatch.setattr(ovs, "vswitchd_answers", lambda: False)
    assert "ovs-vswitchd does not answer" in doctor.check_openvswitch().detail
    monkeypatch.setattr(ovs, "vswitchd_answers", lambda: True)
    monkeypatch.setattr(ovs, "kernel_datapath", lambda: False)
    running = doctor.check_openvswitch()
    assert running.status == "ok" and "user space (netdev) only" in running.detail

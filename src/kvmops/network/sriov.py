"""SR-IOV: physical functions (PFs) and their virtual functions (VFs) as sysfs shows
them, the driver-specific VF rate ranges, VF setting checks, and the libvirt XML of the
three ways to give a VF to a VM.

Pure model: reads files under a sysfs root (``/sys`` on a host, a simulated tree in
tests: :func:`kvmops.host.sriov.write_fake_tree`) and builds XML; the commands that
change a PF are in :mod:`kvmops.host.sriov`. A path is read only when it resolves
inside the root: a symlink pointing outside it is treated as absent.

sysfs layout used (the kernel's)::

    ROOT/class/net/PF -> ../../devices/.../0000:03:00.0/net/PF
    ROOT/class/net/PF/operstate, carrier, speed
    ROOT/class/net/PF/device -> the PF's PCI device directory, with
        sriov_totalvfs, sriov_numvfs, driver -> .../drivers/ixgbe,
        virtfn0 -> ../0000:03:10.0, virtfn1 -> ...
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lxml import etree

from kvmops.errors import ValidationError
from kvmops.records import Record

__all__ = [
    "DRIVER_RATES",
    "METHODS",
    "Allocation",
    "PhysFn",
    "RateRange",
    "VfConfig",
    "VfState",
    "VirtFn",
    "discover",
    "hostdev_network_xml",
    "hostdev_xml",
    "interface_xml",
    "parse_onoff",
    "parse_pci",
    "pci_addresses_in",
    "validate_pf_name",
    "validate_rate",
    "validate_vf_mac",
    "validate_vf_vlan",
]

ZERO_MAC = "00:00:00:00:00:00"
_PCI_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
#: The ways a VF is given to a VM (the seed's three): ``interface`` is
#: ``<interface type='hostdev'>`` (MAC and VLAN set by libvirt), ``hostdev`` a plain
#: ``<hostdev>`` (the guest sees a bare PCI device; MAC/VLAN only from the PF side),
#: ``network`` a libvirt network with ``<forward mode='hostdev'>`` over the PFs.
METHODS = ("interface", "hostdev", "network")


@dataclass(frozen=True)
class RateRange:
    """The ``max_tx_rate`` (Mbit/s) a driver accepts for a VF; 0 means no limit."""

    low: int
    high: int
    note: str


#: VF ``max_tx_rate`` ranges by PF driver. ixgbe (X520/X540/X550) answers an error
#: outside 11..10000; i40e (X710/XL710) silently raises anything below 50 to 50 --
#: kvmops refuses it instead, so a VF never gets a rate other than the one asked for.
#: Other drivers: no table entry; the rate must be at most the PF's link speed (when
#: sysfs knows it) and the driver's own answer is passed on.
DRIVER_RATES: dict[str, RateRange] = {
    "ixgbe": RateRange(11, 10000, "Intel 82599/X520/X540/X550: the driver refuses "
                                  "outside 11..10000"),
    "i40e": RateRange(50, 10000, "Intel X710/XL710: the driver silently raises a rate "
                                 "below 50 to 50; kvmops refuses it"),
}


@dataclass
class VirtFn(Record):
    """One VF of a PF: its index (``virtfnN``), PCI address and netdev (None while a
    VF driver does not bind it, or it is passed through to a VM)."""

    index: int
    pci: str
    netdev: str | None = None


@dataclass
class PhysFn(Record):
    """One SR-IOV capable network device: its VF count now and at most, driver, link."""

    name: str
    pci: str
    driver: str | None
    totalvfs: int
    numvfs: int
    link: str  # operstate: up, down, unknown...
    speed: int | None  # Mbit/s, None when sysfs does not know it (link down)
    vfs: list[VirtFn] = field(default_factory=list)


@dataclass
class VfState(Record):
    """A VF's settings as the PF reports them (``ip link show PF``'s ``vf N`` line)."""

    mac: str = ZERO_MAC
    vlan: int = 0
    max_tx_rate: int = 0
    spoofchk: bool = True
    trust: bool = False

    @property
    def is_reset(self) -> bool:
        """Left as the kernel makes a VF (the state kvmops restores on release)."""
        return self.mac == ZERO_MAC and self.vlan == 0 and self.max_tx_rate == 0


@dataclass
class Allocation(Record):
    """One VF given to one VM's NIC."""

    id: int
    pool: str
    pf: str
    vf: int
    pci: str
    vm: str
    vm_uuid: str | None
    mac: str
    vlan: int
    max_tx_rate: int  # Mbit/s, 0: no limit
    spoofchk: bool
    trust: bool
    created_at: datetime
    created_by: str | None


@dataclass(frozen=True)
class VfConfig:
    """What kvmops sets on an allocated VF."""

    mac: str
    vlan: int = 0  # 0: untagged
    max_tx_rate: int = 0  # Mbit/s; 0: no limit
    spoofchk: bool = True
    trust: bool = False

    def state(self) -> VfState:
        return VfState(mac=self.mac, vlan=self.vlan, max_tx_rate=self.max_tx_rate,
                       spoofchk=self.spoofchk, trust=self.trust)


#: The state of a released VF: the seed's reset (mac all zeros, vlan 0, max_tx_rate 0)
#: with the kernel's defaults for spoofchk (on) and trust (off).
RESET = VfConfig(mac=ZERO_MAC)


# --------------------------------------------------------------------------- checks
def validate_pf_name(name: str) -> str:
    """A PF is a network interface name (at most 15 characters, no path)."""
    if not _IFNAME_RE.match(name):
        raise ValidationError(f"invalid PF name '{name}'",
                              hint="name a network interface: at most 15 letters, digits, "
                                   "'_', '.', '-' (see 'kvmops sriov pf list')")
    return name


def validate_vf_mac(mac: str) -> str:
    """A unicast, non-zero MAC (the VF's address in the guest)."""
    if not _MAC_RE.match(mac):
        raise ValidationError(f"invalid MAC address '{mac}'",
                              hint="use six hex pairs like 52:54:00:12:34:56")
    mac = mac.lower()
    if int(mac[:2], 16) & 1 or mac == ZERO_MAC:
        raise ValidationError(f"MAC address {mac} cannot be a VF's address",
                              hint="use a unicast address such as 52:54:00:..., or leave "
                                   "it out and kvmops picks one")
    return mac


def validate_vf_vlan(vlan: int | None) -> int:
    """The VF's port VLAN: 1..4094, or None/0 for untagged."""
    if vlan is None or vlan == 0:
        return 0
    if not 1 <= vlan <= 4094:
        raise ValidationError(f"invalid VF VLAN {vlan}", hint="use a tag 1..4094")
    return vlan


def validate_rate(rate: int | None, driver: str | None, pf: str,
                  speed: int | None = None) -> int:
    """``max_tx_rate`` in Mbit/s checked against the PF driver's range; 0/None: none."""
    if rate is None or rate == 0:
        return 0
    if rate < 0:
        raise ValidationError(f"invalid VF rate {rate} Mbps", hint="give a positive Mbit/s")
    limits = DRIVER_RATES.get(driver or "")
    if limits is not None and not limits.low <= rate <= limits.high:
        raise ValidationError(
            f"VF rate {rate} Mbps is outside the {driver} range {limits.low}..{limits.high} "
            f"Mbps (PF '{pf}')",
            hint=f"give --rate {limits.low}..{limits.high}, or leave it out for no limit")
    if speed and rate > speed:
        raise ValidationError(f"VF rate {rate} Mbps is above the link speed of PF '{pf}' "
                              f"({speed} Mbps)", hint=f"give --rate at most {speed}")
    return rate


def parse_onoff(value: str | bool | None, what: str) -> bool | None:
    """``on``/``off`` (the words of ``ip link``) as a bool; None stays None."""
    if value is None or isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ValidationError(f"invalid {what} '{value}'", hint="use on or off")


def parse_pci(address: str) -> tuple[int, int, int, int]:
    """``0000:03:10.1`` -> (domain, bus, slot, function)."""
    m = _PCI_RE.match(address.lower())
    if m is None:
        raise ValidationError(f"invalid PCI address '{address}'",
                              hint="use DDDD:BB:SS.F, e.g. 0000:03:10.1")
    return int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4], 16)


# --------------------------------------------------------------------------- discovery
def _inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved, or None when it does not exist or resolves outside ``root``
    (a symlink never leads kvmops out of the sysfs root)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        return None
    return Path(real) if os.path.exists(real) else None


def _read(root: Path, path: Path) -> str | None:
    found = _inside(root, path)
    if found is None or not found.is_file():
        return None
    try:
        return found.read_text(errors="replace").strip()
    except OSError:
        return None  # sysfs: EINVAL for speed of a link that is down


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _pf(root: Path, name: str) -> PhysFn | None:
    netdir = root / "class" / "net" / name
    device = _inside(root, netdir / "device")
    if device is None or _read(root, device / "sriov_totalvfs") is None:
        return None
    driver_dir = _inside(root, device / "driver")
    vfs = []
    for entry in sorted(device.glob("virtfn*")):
        index = _int(entry.name[len("virtfn"):])
        target = _inside(root, entry)
        if index is None or target is None or not _PCI_RE.match(target.name):
            continue
        net = target / "net"
        names = sorted(p.name for p in net.iterdir()) if _inside(root, net) else []
        vfs.append(VirtFn(index=index, pci=target.name, netdev=names[0] if names else None))
    vfs.sort(key=lambda v: v.index)
    speed = _int(_read(root, netdir / "speed"))
    return PhysFn(name=name, pci=device.name,
                  driver=driver_dir.name if driver_dir is not None else None,
                  totalvfs=_int(_read(root, device / "sriov_totalvfs")) or 0,
                  numvfs=_int(_read(root, device / "sriov_numvfs")) or 0,
                  link=_read(root, netdir / "operstate") or "unknown",
                  speed=speed if speed and speed > 0 else None, vfs=vfs)


def discover(root: Path, name: str | None = None) -> list[PhysFn]:
    """The SR-IOV capable network devices under ``root`` (one when ``name`` is given),
    by name."""
    net = root / "class" / "net"
    if name is not None:
        validate_pf_name(name)
        names = [name]
    else:
        try:
            names = sorted(p.name for p in net.iterdir())
        except OSError:
            return []
    return [pf for pf in (_pf(root, n) for n in names if _IFNAME_RE.match(n))
            if pf is not None]


# --------------------------------------------------------------------------- libvirt XML
def _address(parent: etree._Element, pci: str, *, typed: bool = True) -> etree._Element:
    """``<address>`` of a PCI device; a ``<hostdev>`` source has no ``type`` (libvirt's
    schema refuses it there), an ``<interface type='hostdev'>`` source has one."""
    domain, bus, slot, function = parse_pci(pci)
    el = etree.SubElement(parent, "address", type="pci") if typed else etree.SubElement(
        parent, "address")
    el.set("domain", f"0x{domain:04x}")
    el.set("bus", f"0x{bus:02x}")
    el.set("slot", f"0x{slot:02x}")
    el.set("function", f"0x{function:x}")
    return el


def interface_xml(pci: str, mac: str, vlan: int = 0) -> str:
    """``<interface type='hostdev' managed='yes'>``: the VF with the MAC (and VLAN) that
    libvirt sets on it through the PF when the VM starts."""
    el = etree.Element("interface", type="hostdev", managed="yes")
    etree.SubElement(el, "mac", address=validate_vf_mac(mac))
    _address(etree.SubElement(el, "source"), pci)
    if validate_vf_vlan(vlan):
        etree.SubElement(etree.SubElement(el, "vlan"), "tag", id=str(vlan))
    return etree.tostring(el, encoding="unicode")


def hostdev_xml(pci: str) -> str:
    """A plain ``<hostdev mode='subsystem' type='pci'>``: the guest gets the bare VF;
    its MAC/VLAN can only be set from the PF side (``ip link set PF vf N ...``)."""
    el = etree.Element("hostdev", mode="subsystem", type="pci", managed="yes")
    _address(etree.SubElement(el, "source"), pci, typed=False)
    return etree.tostring(el, encoding="unicode")


def hostdev_network_xml(name: str, pf: str) -> str:
    """A libvirt network that hands out the VFs of ``pf`` (``<interface type='network'>``
    on it). libvirt takes one ``<pf>`` per network (its schema), reads the VFs when the
    network starts -- it must start after they exist -- and does not refuse more NICs
    than VFs at define time (why kvmops allocates VFs itself)."""
    net = etree.Element("network")
    etree.SubElement(net, "name").text = name
    forward = etree.SubElement(net, "forward", mode="hostdev", managed="yes")
    etree.SubElement(forward, "pf", dev=validate_pf_name(pf))
    return etree.tostring(net, encoding="unicode")


def pci_addresses_in(xml: str) -> set[str]:
    """The host PCI addresses a domain XML passes through (``<hostdev>`` and
    ``<interface type='hostdev'>`` sources), as ``0000:03:10.1``."""
    root = etree.fromstring(xml.encode())
    found = set()
    for path in ("devices/hostdev[@type='pci']/source/address",
                 "devices/interface[@type='hostdev']/source/address"):
        for addr in root.findall(path):
            pci = _pci_of(addr)
            if pci is not None:
                found.add(pci)
    return found


def _pci_of(addr: etree._Element | None) -> str | None:
    """An ``<address type='pci'>`` as ``0000:03:10.1`` (None when not one)."""
    if addr is None:
        return None
    try:
        return (f"{int(addr.get('domain', '0'), 16):04x}:{int(addr.get('bus', '0'), 16):02x}:"
                f"{int(addr.get('slot', '0'), 16):02x}.{int(addr.get('function', '0'), 16):x}")
    except ValueError:
        return None


@dataclass
class HostdevNic:
    """An ``<interface type='hostdev'>`` of a domain XML."""

    mac: str
    pci: str | None
    vlan: int | None


def hostdev_nics(xml: str) -> list[HostdevNic]:
    root = etree.fromstring(xml.encode())
    found = []
    for el in root.findall("devices/interface[@type='hostdev']"):
        mac_el = el.find("mac")
        mac = mac_el.get("address", "") if mac_el is not None else ""
        pci = _pci_of(el.find("source/address"))
        tag = el.find("vlan/tag")
        vlan = _int(tag.get("id")) if tag is not None else None
        found.append(HostdevNic(mac=mac.lower(), pci=pci, vlan=vlan))
    return found

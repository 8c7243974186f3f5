"""The commands that touch an SR-IOV PF, behind one small interface (:class:`PfControl`):
set a VF's MAC, VLAN, ``max_tx_rate``, spoofchk and trust, read them back, and set the
PF's VF count.

- :class:`RealPf` runs ``ip link set dev PF vf N ...`` and writes
  ``/sys/class/net/PF/device/sriov_numvfs`` (a real host; this machine has no SR-IOV NIC,
  so that path is untested here).
- :class:`SimulatedPf` acts on a tree written by :func:`write_fake_tree`: a JSON state
  file per VF inside the tree, and VF directories/``virtfnN`` links made or removed as
  the kernel would.

``KVMOPS_SYSFS_ROOT`` chooses: unset, ``/sys`` and the real commands; set to a
directory, the simulated tree there (which must carry the marker file the helper
writes: kvmops never writes into a directory it did not make).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from kvmops.errors import (
    AlreadyExistsError,
    HypervisorError,
    NotFoundError,
    StateError,
    UnsupportedError,
    ValidationError,
)
from kvmops.network.sriov import (
    ZERO_MAC,
    PhysFn,
    VfConfig,
    VfState,
    discover,
    validate_pf_name,
)

__all__ = ["MARKER", "PfControl", "RealPf", "SimulatedPf", "control", "sysfs_root",
           "write_fake_tree"]

ENV = "KVMOPS_SYSFS_ROOT"
MARKER = "kvmops-fake-sriov"  # at the root of a simulated tree
STATE_FILE = "kvmops-vf-state.json"  # in each simulated VF's PCI directory
MAX_FAKE_VFS = 128
VF_DRIVERS = {"ixgbe": "ixgbevf", "i40e": "iavf"}
_PCI_DIR = "devices/pci0000:00"
_PCI_NAME = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def sysfs_root() -> Path:
    """The sysfs root kvmops reads PFs and VFs from: ``KVMOPS_SYSFS_ROOT`` or ``/sys``."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return Path("/sys")
    path = Path(value)
    if not path.is_absolute():
        raise ValidationError(f"{ENV}={value} is not an absolute path",
                              hint="give the simulated tree's absolute path, or unset it")
    return path


class PfControl(Protocol):
    """What kvmops does to a PF; the real one and the simulated one."""

    root: Path
    simulated: bool

    def set_vf(self, pf: str, vf: int, config: VfConfig) -> None:
        """Set MAC, VLAN, max_tx_rate, spoofchk and trust of VF ``vf`` of ``pf``."""

    def vf_states(self, pf: str) -> dict[int, VfState]:
        """Each VF's settings, as the PF reports them."""

    def set_numvfs(self, pf: PhysFn, count: int) -> None:
        """Make ``count`` VFs (0 removes them all)."""


def _pf_device(root: Path, pf: str) -> Path:
    device = root / "class" / "net" / pf / "device"
    real = Path(os.path.realpath(device))
    real_root = os.path.realpath(root)
    if not str(real).startswith(real_root.rstrip("/") + "/") or not real.is_dir():
        raise NotFoundError(f"PF '{pf}' not found under {root}",
                            hint="see 'kvmops sriov pf list'")
    return real


class RealPf:
    """``ip link`` and sysfs writes on a real host."""

    simulated = False

    def __init__(self, root: Path = Path("/sys")) -> None:
        self.root = root

    def _ip(self, *args: str, what: str) -> str:
        ip = shutil.which("ip")
        if ip is None:
            raise UnsupportedError("the 'ip' command (iproute2) is not installed",
                                   hint="install iproute2")
        proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30,
                              check=False)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise HypervisorError(f"{what} failed: {detail}",
                                  hint="check the PF with 'ip link show' and its driver")
        return proc.stdout

    def set_vf(self, pf: str, vf: int, config: VfConfig) -> None:
        validate_pf_name(pf)
        self._ip("link", "set", "dev", pf, "vf", str(vf), "mac", config.mac,
                 "vlan", str(config.vlan), "max_tx_rate", str(config.max_tx_rate),
                 "spoofchk", "on" if config.spoofchk else "off",
                 "trust", "on" if config.trust else "off",
                 what=f"setting VF {vf} of PF '{pf}'")

    def vf_states(self, pf: str) -> dict[int, VfState]:
        validate_pf_name(pf)
        out = self._ip("-j", "link", "show", "dev", pf, what=f"reading the VFs of PF '{pf}'")
        try:
            links = json.loads(out or "[]")
        except json.JSONDecodeError:
            return {}
        return parse_vfinfo(links[0].get("vfinfo_list", []) if links else [])

    def set_numvfs(self, pf: PhysFn, count: int) -> None:
        path = _pf_device(self.root, pf.name) / "sriov_numvfs"
        try:
            if pf.numvfs and count:  # the kernel refuses N -> M without 0 between
                path.write_text("0")
            path.write_text(str(count))
        except OSError as err:
            raise HypervisorError(f"setting {count} VFs on PF '{pf.name}' failed: "
                                  f"{err.strerror}",
                                  hint="check the driver (max_vfs) and that SR-IOV is "
                                       "enabled in the firmware") from err


def parse_vfinfo(items: list[dict[str, Any]]) -> dict[int, VfState]:
    """``ip -j link show``'s ``vfinfo_list``."""
    found = {}
    for item in items:
        if "vf" not in item:
            continue
        vlan = item.get("vlan", 0)
        if item.get("vlan_list"):
            vlan = item["vlan_list"][0].get("vlan", 0)
        rate = item.get("rate") or {}
        found[int(item["vf"])] = VfState(
            mac=str(item.get("address") or item.get("mac") or ZERO_MAC).lower(),
            vlan=int(vlan or 0), max_tx_rate=int(rate.get("max_tx", 0) or 0),
            spoofchk=bool(item.get("spoofchk", True)), trust=bool(item.get("trust", False)))
    return found


class SimulatedPf:
    """The same interface over a simulated tree (:func:`write_fake_tree`)."""

    simulated = True

    def __init__(self, root: Path) -> None:
        if not (root / MARKER).is_file():
            raise ValidationError(f"{ENV}={root} is not a simulated SR-IOV tree (no {MARKER}"
                                  " file)",
                                  hint="write one with 'kvmops dev fake-sriov DIR --pf NAME "
                                       "--vfs N --driver ixgbe', or unset " + ENV)
        self.root = root

    def _vf_dir(self, pf: str, vf: int) -> Path:
        device = _pf_device(self.root, pf)
        link = device / f"virtfn{vf}"
        if not link.is_symlink():
            # What the kernel answers for a VF that does not exist (the seed's case of
            # more VF NICs than VFs).
            raise StateError(f"PF '{pf}' has no VF {vf}: RTNETLINK answers: Cannot "
                             "allocate memory",
                             hint=f"see 'kvmops sriov pf list' (VFs of '{pf}')")
        return _pf_device(self.root, pf).parent / _vf_name(link)

    def set_vf(self, pf: str, vf: int, config: VfConfig) -> None:
        path = self._vf_dir(pf, vf) / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(config.state().model_dump()))
        os.replace(tmp, path)

    def vf_states(self, pf: str) -> dict[int, VfState]:
        device = _pf_device(self.root, pf)
        found = {}
        for link in device.glob("virtfn*"):
            try:
                index = int(link.name[len("virtfn"):])
                data = json.loads((self._vf_dir(pf, index) / STATE_FILE).read_text())
                found[index] = VfState(**data)
            except FileNotFoundError:
                found[index] = VfState()
            except (ValueError, TypeError, OSError):
                continue
        return found

    def set_numvfs(self, pf: PhysFn, count: int) -> None:
        device = _pf_device(self.root, pf.name)
        if count > pf.totalvfs:
            raise HypervisorError(f"setting {count} VFs on PF '{pf.name}' failed: Numerical "
                                  "result out of range",
                                  hint=f"at most sriov_totalvfs = {pf.totalvfs}")
        for link in device.glob("virtfn*"):
            target = device.parent / _vf_name(link)
            link.unlink()
            shutil.rmtree(target, ignore_errors=True)
        bus = int(pf.pci.split(":")[1], 16)
        for index in range(count):
            _make_vf(device, pf.pci, bus, index)
        (device / "sriov_numvfs").write_text(str(count))


def _vf_name(link: Path) -> str:
    """The PCI address a ``virtfnN`` link names (``../0000:03:10.1``): a sibling of the
    PF's directory, never anything else (the tree is written, and removed, only there)."""
    name = os.readlink(link).rsplit("/", 1)[-1]
    if not _PCI_NAME.match(name):
        raise StateError(f"{link} does not name a VF's PCI address",
                         hint="rewrite the simulated tree with 'kvmops dev fake-sriov'")
    return name


def control() -> PfControl:
    """The PF commands for the configured sysfs root (see the module's doc)."""
    root = sysfs_root()
    if os.path.realpath(root) == "/sys":
        return RealPf(root)
    return SimulatedPf(root)


# --------------------------------------------------------------------------- fake tree
def _vf_pci(bus: int, index: int) -> str:
    return f"0000:{bus:02x}:{0x10 + index // 8:02x}.{index % 8}"


def _make_vf(device: Path, pf_pci: str, bus: int, index: int) -> None:
    pci = _vf_pci(bus, index)
    vf_dir = device.parent / pci
    vf_dir.mkdir(exist_ok=True)
    (vf_dir / "physfn").symlink_to(f"../{pf_pci}")
    (device / f"virtfn{index}").symlink_to(f"../{pci}")


def write_fake_tree(directory: Path, pf: str, vfs: int, driver: str, *,
                    numvfs: int | None = None, link: str = "up", speed: int = 10000,
                    bus: int | None = None) -> PhysFn:
    """Add PF ``pf`` with ``vfs`` possible VFs (``numvfs`` made, default all) and
    ``driver`` to the simulated sysfs tree in ``directory`` (made if missing); call
    again for more PFs. The PF sits on PCI bus ``bus`` (default: the next free one from
    3), its VFs at BUS:10.0, BUS:10.1, ... The layout is the kernel's (see
    :mod:`kvmops.network.sriov`)."""
    validate_pf_name(pf)
    if not 1 <= vfs <= MAX_FAKE_VFS:
        raise ValidationError(f"invalid VF count {vfs}", hint=f"use 1..{MAX_FAKE_VFS}")
    made = vfs if numvfs is None else numvfs
    if not 0 <= made <= vfs:
        raise ValidationError(f"invalid --numvfs {made}", hint=f"use 0..{vfs}")
    if not driver or "/" in driver or driver.startswith("."):
        raise ValidationError(f"invalid driver name '{driver}'", hint="e.g. ixgbe or i40e")
    if link not in ("up", "down"):
        raise ValidationError(f"invalid link state '{link}'", hint="use up or down")
    directory = directory.absolute()
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise ValidationError(f"{directory} is not empty and not a simulated SR-IOV tree",
                              hint="give a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("simulated sysfs tree written by kvmops dev fake-sriov\n")
    if (directory / "class" / "net" / pf).is_symlink():
        raise AlreadyExistsError(f"PF '{pf}' already exists in {directory}",
                                 hint="choose another PF name")
    pci_root = directory / _PCI_DIR
    pci_root.mkdir(parents=True, exist_ok=True)
    buses = [int(p.name.split(":")[1], 16) for p in pci_root.iterdir()
             if (p / "sriov_totalvfs").is_file()]
    if bus is None:
        bus = max(buses, default=2) + 1
    if not 1 <= bus <= 0xFF or bus in buses:
        raise ValidationError(f"PCI bus {bus} is taken or out of range in the simulated tree",
                              hint="give another --bus 1..255")
    pf_pci = f"0000:{bus:02x}:00.0"
    device = pci_root / pf_pci
    device.mkdir()
    drivers = directory / "bus" / "pci" / "drivers"
    for name in (driver, VF_DRIVERS.get(driver, driver + "vf")):
        (drivers / name).mkdir(parents=True, exist_ok=True)
    (device / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
    (device / "sriov_totalvfs").write_text(f"{vfs}\n")
    (device / "sriov_numvfs").write_text(f"{made}\n")
    netdir = device / "net" / pf
    netdir.mkdir(parents=True)
    (netdir / "device").symlink_to(f"../../../{pf_pci}")
    (netdir / "operstate").write_text(f"{link}\n")
    (netdir / "carrier").write_text("1\n" if link == "up" else "0\n")
    (netdir / "speed").write_text(f"{speed if link == 'up' else -1}\n")
    (netdir / "address").write_text(f"02:00:00:00:{bus:02x}:00\n")
    classnet = directory / "class" / "net"
    classnet.mkdir(parents=True, exist_ok=True)
    (classnet / pf).symlink_to(f"../../{_PCI_DIR}/{pf_pci}/net/{pf}")
    for index in range(made):
        _make_vf(device, pf_pci, bus, index)
    found = discover(directory, pf)
    assert found, "the simulated PF is readable"
    return found[0]

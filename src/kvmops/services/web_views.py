"""What the web UI's pages read beyond the REST API's use cases: a VM's details, its
snapshot tree, a repository's backup points as per-disk chains, the host summary and
health checks, the job history; live figures (guest addresses and OS, statistics),
the VNC port of a running VM, and key presses for the console page.

The web package calls these (and the other services) only: it never reaches into
``kvmops.vm``, ``kvmops.backup``, ``kvmops.snapshot`` or libvirt itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kvmops.backup.model import Manifest
from kvmops.errors import HostUnavailableError, KvmopsError, NotFoundError, StateError
from kvmops.host.connection import Host
from kvmops.host.domain import state_name
from kvmops.host.info import HostInfo, host_info
from kvmops.paths import policy
from kvmops.services import backups as backup_service
from kvmops.services.caller import Caller
from kvmops.services.doctor import DoctorReport, last_report, run_doctor
from kvmops.vm import lifecycle
from kvmops.vm.domxml import DomainSpec, validate_name
from kvmops.vm.lifecycle import VmInfo

__all__ = ["BackupPoints", "Chain", "DiskTimeline", "GuestAddress", "GuestDetails",
           "ImageFile", "Point", "Stats", "backup_points", "build_timeline", "check_name",
           "check_network_name",
           "doctor", "guest_details", "host_summary", "image_dirs", "image_files", "last_doctor",
           "list_jobs",
           "merge_addresses", "newest_first", "send_keys", "snapshot_tree", "stats", "vm_info",
           "vnc_port"]

Source = Literal["agent", "lease", "arp"]
SOURCES: tuple[Source, ...] = ("agent", "lease", "arp")

# ------------------------------------------------------------------ names, VMs, host
def check_name(name: str) -> str:
    """A VM name from a URL; NotFoundError (the page's 404) when it cannot be one."""
    try:
        return validate_name(name)
    except KvmopsError:
        raise NotFoundError(f"no VM named '{name[:80]}'") from None


def check_network_name(name: str) -> str:
    """A network name from a URL; NotFoundError (the page's 404) when it cannot be one."""
    from kvmops.network.model import check_name as check_net_name

    try:
        return check_net_name(name)
    except KvmopsError:
        raise NotFoundError(f"no network named '{name[:80]}'") from None


def vm_info(host: Host, name: str) -> VmInfo:
    return lifecycle.info(host, check_name(name))


def snapshot_tree(host: Host, name: str) -> list[tuple[int, Any]]:
    """The VM's snapshots depth first, each with its depth (roots by creation time)."""
    from kvmops.snapshot import service

    return service.tree(service.list_snapshots(host, check_name(name)))


def host_summary(host: Host) -> HostInfo:
    return host_info(host)


def doctor(host: Host) -> DoctorReport:
    return run_doctor(host=host, host_name="local", probes=False)


def last_doctor(host_name: str) -> DoctorReport | None:
    """The host's last doctor report (the host page), None when it never ran there."""
    return last_report(host_name)


def image_dirs() -> list[str]:
    """The allowed image directories, the first being where new images go."""
    return [str(d) for d in policy().image_dirs]


class ImageFile(BaseModel):
    path: str
    size: int  # bytes the file takes (its length; a thin image's virtual size differs)
    modified: datetime


def image_files(limit: int = 500) -> list[ImageFile]:
    """Regular files directly in the allowed image directories, by path (names and
    sizes only: nothing is opened, so no format is guessed)."""
    from datetime import UTC

    found: list[ImageFile] = []
    for directory in policy().image_dirs:
        try:
            entries = sorted(Path(directory).iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.lstat()
            except OSError:
                continue
            if entry.is_symlink() or not entry.is_file():
                continue
            found.append(ImageFile(path=str(entry), size=st.st_size,
                                   modified=datetime.fromtimestamp(st.st_mtime, UTC)))
            if len(found) >= limit:
                return found
    return found


def list_jobs(store: Any, *, state: str | None = None, target: str | None = None,
              limit: int = 100) -> list[Any]:
    """The job history, newest first: what ``GET /api/v1/jobs`` lists, so a job any face
    started (a CLI backup included) shows."""
    from kvmops.services import jobs as job_service

    return list(job_service.list_jobs(store, state=state, target=target, limit=limit))


# ------------------------------------------------------------------ backup chains
class Point(BaseModel):
    id: str
    time: datetime
    type: str  # the disk's own type in this backup: full, incremental, differential
    backup_type: str  # the backup's type
    parent: str | None
    consistency: str
    size: int  # bytes written for this disk
    virtual_size: int


class Chain(BaseModel):
    points: list[Point] = Field(default_factory=list)
    broken: bool = False

    @property
    def size(self) -> int:
        return sum(p.size for p in self.points)


class DiskTimeline(BaseModel):
    target: str
    chains: list[Chain] = Field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(len(c.points) for c in self.chains)


def build_timeline(manifests: list[Manifest]) -> list[DiskTimeline]:
    """Per disk target (sorted), its chains in time order, each point in time order.

    A disk's full backup starts a chain; an incremental or differential point joins the
    chain holding its parent; a point whose parent is not in the repository starts a
    chain marked broken. Pure: no I/O.
    """
    ordered = sorted(manifests, key=lambda m: (m.time, m.id))
    disks: dict[str, DiskTimeline] = {}
    chain_of: dict[tuple[str, str], Chain] = {}  # (target, backup id) -> its chain
    for manifest in ordered:
        for record in manifest.disks:
            timeline = disks.setdefault(record.target, DiskTimeline(target=record.target))
            point = Point(id=manifest.id, time=manifest.time, type=str(record.type),
                          backup_type=str(manifest.type), parent=record.parent,
                          consistency=str(manifest.consistency), size=record.bytes_written,
                          virtual_size=record.virtual_size)
            chain = chain_of.get((record.target, record.parent)) if record.parent else None
            if chain is None:
                chain = Chain(broken=record.parent is not None)
                timeline.chains.append(chain)
            chain.points.append(point)
            chain_of[(record.target, manifest.id)] = chain
    return [disks[t] for t in sorted(disks)]


def newest_first(manifests: list[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.time, m.id), reverse=True)


class BackupPoints(BaseModel):
    """A repository's backups of one VM as the backup page shows them."""

    timeline: list[DiskTimeline] = Field(default_factory=list)
    points: list[Manifest] = Field(default_factory=list)  # newest first
    problem: str | None = None  # one line: what could not be read, what was rejected
    repo_info: dict[str, Any] | None = None  # format, compression, encryption, key id


def backup_points(caller: Caller, repo: str | Path, vm: str) -> BackupPoints:
    """The authenticated backups of ``vm`` in ``repo`` (none when it does not exist yet);
    a problem is said, never raised, so that the page still renders."""
    info = None
    try:
        path = backup_service.repository(caller, repo)
        if not path.is_dir():
            return BackupPoints()
        info = backup_service.repo_info(caller, path)
        manifests, rejected = backup_service.list_backups(caller, path, vm)
    except KvmopsError as err:
        return BackupPoints(problem=str(err), repo_info=info)
    problem = None
    if rejected:
        problem = (f"{len(rejected)} backup(s) failed authentication and are not shown "
                   f"(first: {rejected[0].reason}); run verify")
    return BackupPoints(timeline=build_timeline(manifests), points=newest_first(manifests),
                        problem=problem, repo_info=info)


# ------------------------------------------------------------------ guest addresses
# Guest IP addresses with where they came from: the guest agent, the DHCP lease of a
# libvirt network, or the host's ARP table, in that order of trust. For each NIC (by MAC
# address) the first source that reports an address wins; loopback addresses are left out.
_LOOPBACK_PREFIXES = ("127.", "::1")


class GuestAddress(BaseModel):
    interface: str
    mac: str | None
    address: str
    prefix: int | None
    family: Literal["ipv4", "ipv6"]
    source: Source


def _family(kind: Any, address: str) -> Literal["ipv4", "ipv6"]:
    if kind == 1 or (kind is None and ":" in address):
        return "ipv6"
    return "ipv4"


def merge_addresses(reports: Iterable[tuple[Source, dict[str, Any]]]) -> list[GuestAddress]:
    """``reports``: (source, libvirt ``interfaceAddresses()`` result) in trust order."""
    taken: set[str] = set()  # MACs (or interface names without a MAC) already answered
    out: list[GuestAddress] = []
    for source, report in reports:
        newly: set[str] = set()
        for ifname, iface in sorted(report.items()):
            mac = (iface.get("hwaddr") or "").lower() or None
            key = mac or f"if:{ifname}"
            if key in taken:
                continue
            for addr in iface.get("addrs") or []:
                text = str(addr.get("addr", ""))
                if not text or ifname == "lo" or text.startswith(_LOOPBACK_PREFIXES):
                    continue
                out.append(GuestAddress(interface=ifname, mac=mac, address=text,
                                        prefix=addr.get("prefix"),
                                        family=_family(addr.get("type"), text),
                                        source=source))
                newly.add(key)
        taken |= newly
    return out


def collect(query: Callable[[Source], dict[str, Any] | None]) -> list[GuestAddress]:
    """Ask each source in order (``query`` returns None when the source fails)."""
    reports: list[tuple[Source, dict[str, Any]]] = []
    for source in SOURCES:
        report = query(source)
        if report:
            reports.append((source, report))
    return merge_addresses(reports)


# ------------------------------------------------------------------ live figures
class GuestDetails(BaseModel):
    active: bool
    addresses: list[GuestAddress]
    os: dict[str, str]
    hostname: str | None
    errors: dict[str, str]


class Stats(BaseModel):
    time: float
    active: bool
    vcpus: int
    cpu_time_ns: int | None
    memory_max: int | None  # bytes
    memory_current: int | None
    memory_rss: int | None
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


def _first_line(err: KvmopsError, what: str) -> str:
    return err.message.removeprefix(f"{what}: ").splitlines()[0]


def guest_details(host: Host, name: str) -> GuestDetails:
    """Guest IPs (agent, else DHCP lease, else ARP) and the OS the agent reports; what
    a source could not say is in ``errors`` (a lost connection raises)."""
    domain = host.lookup(check_name(name))
    if not domain.is_active():
        return GuestDetails(active=False, addresses=[], os={}, hostname=None, errors={})
    errors: dict[str, str] = {}

    def ask(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | None:
        try:
            return fn(*args, what=what)
        except HostUnavailableError:
            raise
        except KvmopsError as err:
            errors[what] = _first_line(err, what)
            return None

    addresses = collect(lambda source: ask(source, domain.interface_addresses, source))
    os_info: dict[str, str] = {}
    hostname = None
    info = ask("os", domain.guest_info)
    if info is not None:
        os_info = {k[3:]: str(v) for k, v in info.items() if k.startswith("os.")}
        hostname = info.get("hostname")
    return GuestDetails(active=True, addresses=addresses, os=os_info, hostname=hostname,
                        errors=errors)


def _sum(stats: dict[str, Any], prefix: str, suffix: str) -> int:
    count = int(stats.get(f"{prefix}.count", 0))
    return sum(int(stats.get(f"{prefix}.{i}.{suffix}", 0)) for i in range(count))


def stats(host: Host, name: str) -> Stats:
    """Cumulative counters and memory with the server's time (a graph takes the
    difference of two samples)."""
    data = host.lookup(check_name(name)).stats_record(
        what=f"reading statistics of VM '{name}'")
    now = time.time()
    active = state_name(int(data.get("state.state", -1))) not in ("shut off", "no state",
                                                                   "unknown")

    def kib(key: str) -> int | None:
        value = data.get(key)
        return int(value) * 1024 if value is not None and active else None

    return Stats(
        time=now, active=active, vcpus=int(data.get("vcpu.current", 0)),
        cpu_time_ns=int(data["cpu.time"]) if active and "cpu.time" in data else None,
        memory_max=int(data["balloon.maximum"]) * 1024 if "balloon.maximum" in data else None,
        memory_current=kib("balloon.current"), memory_rss=kib("balloon.rss"),
        disk_read_bytes=_sum(data, "block", "rd.bytes"),
        disk_write_bytes=_sum(data, "block", "wr.bytes"),
        net_rx_bytes=_sum(data, "net", "rx.bytes"), net_tx_bytes=_sum(data, "net", "tx.bytes"))


def vnc_port(host: Host, name: str) -> int:
    """The VNC port of a running VM, from its live XML; StateError when none."""
    domain = host.lookup(check_name(name))
    if not domain.is_active():
        raise StateError(f"VM '{name}' is not running: no console", hint="start it first")
    spec = DomainSpec.from_xml(domain.xml())
    if not spec.vnc or spec.vnc_port is None:
        raise StateError(f"VM '{name}' has no VNC display")
    return spec.vnc_port


def send_keys(host: Host, name: str, keys: list[list[int]], hold_ms: int = 30) -> int:
    """Press each combination of Linux key codes on the VM's keyboard, in order."""
    domain = host.lookup(check_name(name))
    if not domain.is_active():
        raise StateError(f"VM '{name}' is not running", hint="start it first")
    for combo in keys:
        domain.send_keys(combo, hold_ms=hold_ms, what=f"sending keys to VM '{name}'")
        time.sleep(0.01)  # lets QEMU's key queue drain between characters
    return len(keys)

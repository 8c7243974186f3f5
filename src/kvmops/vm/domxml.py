"""libvirt domain XML as typed Python objects.

``DomainSpec.to_xml()`` builds a new definition; ``DomainSpec.from_xml()``
reads one back (including from ``virsh dumpxml``), keeping only what kvmops
models. Edits to an existing domain go through :class:`DomainDocument`, which
changes only the elements it names in the full document, so elements kvmops
does not model are kept; snapshot XML through :func:`snapshot_xml` and
:class:`SnapshotDocument`. QEMU's node names of libvirt's disks come from
:func:`format_node` and :func:`storage_node` alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from kvmops.errors import NotFoundError, ValidationError

AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: kvmops' own element in ``<metadata>``: the files it created for the VM.
METADATA_NS = "https://kvmops.dev/xmlns/vm/1"
METADATA_KEY = "kvmops"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.IGNORECASE)

DiskDevice = Literal["disk", "cdrom"]
# Stored XML (a backup's, a snapshot's) is parsed without entities or network access.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def parse_xml(xml: str | bytes) -> etree._Element:
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)


def format_node(index: int | str) -> str:
    """QEMU's format node of the disk whose live ``<source index='N'>`` is ``index``
    (libvirt >= 5.10 runs QEMU with ``-blockdev``)."""
    return f"libvirt-{index}-format"


def storage_node(index: int | str) -> str:
    """QEMU's protocol (file) node below :func:`format_node`."""
    return f"libvirt-{index}-storage"


def has_agent_channel(xml: str) -> bool:
    """Does the domain have the qemu-ga virtio-serial port (``org.qemu.guest_agent.0``)?
    The one test for it: every module asks here."""
    return DomainDocument(xml).has_agent_channel()


def validate_name(name: str) -> str:
    """VM names: letters, digits and ``_.+-``, not starting with punctuation, <= 64 chars."""
    if not NAME_RE.match(name):
        raise ValidationError(
            f"invalid VM name '{name}'",
            hint="use 1-64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit",
        )
    return name


@dataclass
class DiskSpec:
    target: str  # vda, vdb, sda, hdc ...
    source: str | None  # file path; None for an empty CD-ROM drive
    fmt: str = "qcow2"
    bus: str = "virtio"
    device: DiskDevice = "disk"
    cache: str | None = "none"
    readonly: bool = False
    node_name: str | None = None  # QEMU block node, from live XML (libvirt >= 5.10)
    alias: str | None = None  # device alias (QEMU id), from live XML
    storage_node_name: str | None = None  # QEMU protocol node below node_name, live XML
    pool: str | None = None  # a volume of a block storage pool: <disk type='volume'>
    volume: str | None = None
    io: str | None = None  # <driver io>: native, threads, io_uring (None: QEMU's default)
    # <iotune> limits by libvirt's names (total_iops_sec, read_bytes_sec ...); 0s absent
    iotune: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnedFile:
    """A file kvmops created for a VM (its disks, snapshot overlays): the only files
    ``--remove-storage`` may delete."""

    path: str
    fmt: str


def owned_files_element(files: list[OwnedFile]) -> etree._Element:
    el = etree.Element(f"{{{METADATA_NS}}}vm", nsmap={METADATA_KEY: METADATA_NS})
    for item in files:
        etree.SubElement(el, f"{{{METADATA_NS}}}file", path=item.path, format=item.fmt)
    return el


def owned_files_xml(files: list[OwnedFile]) -> str:
    """The record without its namespace, as libvirt's setMetadata wants it (libvirt puts
    every element into the namespace it is given)."""
    el = etree.Element("vm")
    for item in files:
        etree.SubElement(el, "file", path=item.path, format=item.fmt)
    return etree.tostring(el, encoding="unicode")


def parse_owned_files(element: etree._Element | None) -> list[OwnedFile]:
    if element is None:
        return []
    found = []
    for item in element.iter(f"{{{METADATA_NS}}}file"):
        path, fmt = item.get("path"), item.get("format")
        if path and fmt:
            found.append(OwnedFile(path, fmt))
    return found


#: NIC models kvmops offers: virtio (default), e1000 and rtl8139 for old guests.
NIC_MODELS = ("virtio", "e1000", "rtl8139")
NicKind = Literal["network", "bridge"]
LinkState = Literal["up", "down"]


def validate_mac(mac: str) -> str:
    """A unicast MAC as six hex pairs, lower-cased (libvirt and the guest refuse a
    multicast one; all zeros is no address)."""
    if not _MAC_RE.match(mac):
        raise ValidationError(f"invalid MAC address '{mac}'",
                              hint="use six hex pairs like 52:54:00:12:34:56")
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise ValidationError(f"MAC address {mac} is a multicast address",
                              hint="the first byte must be even, e.g. 52:54:00:...")
    if mac == "00:00:00:00:00:00":
        raise ValidationError("MAC address 00:00:00:00:00:00 is not a usable address",
                              hint="leave out mac= and kvmops picks one")
    return mac


_SOURCE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def validate_nic_source(kind: str, source: str) -> str:
    """The network or host bridge a new NIC joins: a plain name (an interface name has at
    most 15 characters), never a path nor anything a tool could read as an option."""
    limit = 15 if kind == "bridge" else 64
    if not _SOURCE_RE.match(source) or len(source) > limit:
        raise ValidationError(f"invalid {kind} name '{source}' for a NIC",
                              hint=f"use the name of an existing {kind}: letters, digits, "
                                   f"'_', '.', '-' (at most {limit} characters)")
    return source


def validate_nic_model(model: str) -> str:
    if model not in NIC_MODELS:
        raise ValidationError(f"unknown NIC model '{model}'",
                              hint=f"use one of {', '.join(NIC_MODELS)}")
    return model


#: Bandwidth units: libvirt's own (average/peak in KiB/s, burst in KiB) as plain numbers;
#: ``kbit``/``mbit``/``gbit`` rates are decimal bits per second (tc's convention),
#: converted to KiB/s rounded down; burst suffixes ``k``/``m`` are KiB/MiB.
_RATE_RE = re.compile(r"^(\d+)(kbit|mbit|gbit|kib/s|kib)?$", re.IGNORECASE)
_SIZE_RE = re.compile(r"^(\d+)(k|kib|m|mib)?$", re.IGNORECASE)
_BITS = {"kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}
_MAX_KIB = 2**32 - 1  # libvirt stores them as unsigned long long; tc needs less
BANDWIDTH_HINT = ("use AVG[,PEAK[,BURST]]: rates in KiB/s (libvirt's unit) or with kbit/mbit/"
                  "gbit (bits/s), burst in KiB or with m (MiB), e.g. 10mbit,20mbit,256")


@dataclass(frozen=True)
class Rate:
    """One direction of ``<bandwidth>``: average and peak in KiB/s, burst in KiB."""

    average: int
    peak: int | None = None
    burst: int | None = None

    @classmethod
    def parse(cls, text: str, direction: str) -> Rate:
        """``AVG[,PEAK[,BURST]]`` as documented in :data:`BANDWIDTH_HINT`."""
        parts = [p.strip() for p in text.split(",")]
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValidationError(f"invalid --{direction} '{text}'", hint=BANDWIDTH_HINT)
        average = _kib_rate(parts[0], text, direction)
        peak = _kib_rate(parts[1], text, direction) if len(parts) > 1 and parts[1] else None
        burst = None
        if len(parts) > 2 and parts[2]:
            m = _SIZE_RE.match(parts[2])
            if not m:
                raise ValidationError(f"invalid --{direction} '{text}': bad burst "
                                      f"'{parts[2]}'", hint=BANDWIDTH_HINT)
            burst = int(m.group(1)) * (1024 if (m.group(2) or "k").lower()[0] == "m" else 1)
            if not 1 <= burst <= _MAX_KIB:
                raise ValidationError(f"invalid --{direction} '{text}': burst must be "
                                      f"1..{_MAX_KIB} KiB", hint=BANDWIDTH_HINT)
        if peak is not None and peak < average:
            raise ValidationError(f"invalid --{direction} '{text}': peak {peak} KiB/s is "
                                  f"below the average {average} KiB/s", hint=BANDWIDTH_HINT)
        return cls(average=average, peak=peak, burst=burst)

    def text(self) -> str:
        """``AVG[,PEAK[,BURST]]`` in libvirt's units (what ``parse`` reads back)."""
        out = str(self.average)
        if self.peak is not None or self.burst is not None:
            out += f",{self.peak if self.peak is not None else ''}"
        if self.burst is not None:
            out += f",{self.burst}"
        return out


def _kib_rate(value: str, text: str, direction: str) -> int:
    m = _RATE_RE.match(value)
    if not m:
        raise ValidationError(f"invalid --{direction} '{text}': bad rate '{value}'",
                              hint=BANDWIDTH_HINT)
    number, unit = int(m.group(1)), (m.group(2) or "").lower()
    kib = number * _BITS[unit] // 8 // 1024 if unit in _BITS else number
    if not 1 <= kib <= _MAX_KIB:
        raise ValidationError(f"invalid --{direction} '{text}': rate '{value}' is "
                              f"{kib} KiB/s, must be 1..{_MAX_KIB}", hint=BANDWIDTH_HINT)
    return kib


@dataclass(frozen=True)
class Vlan:
    """``<vlan>``: one access tag, or a trunk of tags with an optional untagged native
    one. Honoured only on Open vSwitch ports and SR-IOV VFs (hostdev)."""

    tags: tuple[int, ...]
    trunk: bool = False
    native: int | None = None  # trunk only: untagged frames belong to this tag

    def __post_init__(self) -> None:
        if not self.tags:
            raise ValidationError("a VLAN needs at least one tag")
        for tag in self.tags:
            if not 1 <= tag <= 4094:
                raise ValidationError(f"invalid VLAN tag {tag}", hint="use 1..4094")
        if len(set(self.tags)) != len(self.tags):
            raise ValidationError("a VLAN tag is given twice in the trunk list")
        if not self.trunk and len(self.tags) != 1:
            raise ValidationError("an access VLAN has exactly one tag",
                                  hint="use --trunk for a list")
        if self.native is not None and (not self.trunk or self.native not in self.tags):
            raise ValidationError(f"native VLAN {self.native} must be one of the trunk's tags")

    @classmethod
    def parse(cls, vlan: str | None, trunk: str | None, native: int | None = None
              ) -> Vlan | None:
        """``--vlan N`` (access) or ``--trunk 10,20[,...]`` (with ``--native N``)."""
        if vlan is not None and trunk is not None:
            raise ValidationError("give either --vlan or --trunk, not both")
        if native is not None and trunk is None:
            raise ValidationError("--native needs --trunk")
        text = vlan if vlan is not None else trunk
        if text is None:
            return None
        try:
            tags = tuple(int(t.strip()) for t in text.split(","))
        except ValueError:
            raise ValidationError(f"invalid VLAN '{text}'",
                                  hint="use --vlan N or --trunk N,M,... with tags 1..4094"
                                  ) from None
        return cls(tags=tags, trunk=trunk is not None, native=native)

    def text(self) -> str:
        if not self.trunk:
            return str(self.tags[0])
        out = "trunk " + ",".join(str(t) for t in self.tags)
        return out + (f" native {self.native}" if self.native is not None else "")


@dataclass
class NicSpec:
    """One ``<interface>`` of type network or bridge."""

    kind: NicKind
    source: str
    model: str = "virtio"
    mac: str | None = None
    target_dev: str | None = None  # host tap, from live XML
    link: LinkState | None = None  # <link state>; None: libvirt's default, up
    alias: str | None = None  # device alias (QEMU id), from live XML
    inbound: Rate | None = None  # <bandwidth><inbound>: traffic to the guest
    outbound: Rate | None = None  # <bandwidth><outbound>: traffic from the guest
    vlan: Vlan | None = None
    virtualport: str | None = None  # <virtualport type>, e.g. openvswitch
    queues: int | None = None  # <driver queues>: virtio multiqueue (queue pairs)
    boot_order: int | None = None  # <boot order>: network (PXE) boot in this position

    def __post_init__(self) -> None:
        if self.mac is not None and not _MAC_RE.match(self.mac):
            raise ValidationError(f"invalid MAC address '{self.mac}'",
                                  hint="use six hex pairs like 52:54:00:12:34:56")

    def check_queues_and_boot(self) -> NicSpec:
        """Refuse what a user asked for that libvirt/QEMU would refuse later (not done
        on parsing an existing definition: libvirt's own checks apply there)."""
        if self.queues is not None:
            check_queues(self.queues, self.model)
        if self.boot_order is not None and not 1 <= self.boot_order <= MAX_BOOT_ORDER:
            raise ValidationError(f"invalid NIC boot order {self.boot_order}",
                                  hint=f"use 1..{MAX_BOOT_ORDER} (1 boots first)")
        return self

    @classmethod
    def parse(cls, text: str) -> NicSpec:
        """``--nic network=NAME[,model=virtio|e1000|rtl8139][,mac=52:54:00:..]`` or
        ``bridge=BR[,...]`` (also ``,queues=N``, ``,boot=N`` and ``,vlan=N``: an access
        VLAN tag, Open vSwitch only); the MAC checked as a unicast address."""
        values: dict[str, str] = {}
        hint = "use network=NAME or bridge=BR, optionally ,model=virtio,mac=52:54:00:12:34:56"
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ValidationError(f"invalid --nic '{text}'", hint=hint)
            if key in values:
                raise ValidationError(f"invalid --nic '{text}': {key}= given twice", hint=hint)
            values[key] = value
        unknown = set(values) - {"network", "bridge", "model", "mac", "queues", "boot",
                                 "vlan"}
        if unknown:
            raise ValidationError(f"invalid --nic '{text}': unknown key(s) "
                                  f"{', '.join(sorted(unknown))}",
                                  hint="known keys: network, bridge, model, mac, queues, boot, "
                                       "vlan")
        numbers: dict[str, int] = {}
        for key in ("queues", "boot"):
            if key in values:
                if not values[key].isdigit():
                    raise ValidationError(f"invalid --nic '{text}': {key}= must be a number",
                                          hint="e.g. queues=2 (virtio only), boot=1")
                numbers[key] = int(values[key])
        if ("network" in values) == ("bridge" in values):
            raise ValidationError(f"invalid --nic '{text}': give exactly one of network= or "
                                  "bridge=", hint=hint)
        kind: NicKind = "network" if "network" in values else "bridge"
        mac = values.get("mac")
        return cls(kind=kind, source=validate_nic_source(kind, values[kind]),
                   model=validate_nic_model(values.get("model", "virtio")),
                   mac=validate_mac(mac) if mac is not None else None,
                   queues=numbers.get("queues"), boot_order=numbers.get("boot"),
                   vlan=Vlan.parse(values["vlan"], None) if "vlan" in values else None
                   ).check_queues_and_boot()


#: QEMU's virtio-net takes at most 1024 queue pairs; libvirt passes ``queues`` through.
MAX_QUEUES = 256
MAX_BOOT_ORDER = 99


def check_queues(queues: int, model: str) -> int:
    """Multiqueue is a virtio-net feature: 1..MAX_QUEUES pairs, virtio model only."""
    if model != "virtio":
        raise ValidationError(f"multiqueue (queues={queues}) needs the virtio model, not "
                              f"'{model}'", hint="use model=virtio or leave out queues")
    if not 1 <= queues <= MAX_QUEUES:
        raise ValidationError(f"invalid number of NIC queues {queues}",
                              hint=f"use 1..{MAX_QUEUES}, usually the VM's vCPU count")
    return queues


@dataclass
class Topology:
    sockets: int
    cores: int
    threads: int

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


@dataclass
class DomainSpec:
    name: str
    memory_bytes: int
    vcpus: int = 1
    domain_type: str = "qemu"  # libvirt's: "kvm" or "qemu" (TCG)
    topology: Topology | None = None
    machine: str = "pc"
    arch: str = "x86_64"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot: list[str] = field(default_factory=lambda: ["hd"])
    acpi: bool = True
    apic: bool = True
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    agent_channel: bool = True
    vnc: bool = True
    vnc_listen: str = "127.0.0.1"
    vnc_port: int | None = None  # from live XML
    serial_console: bool = True
    uuid: str | None = None
    description: str | None = None
    owned_files: list[OwnedFile] = field(default_factory=list)

    # ---------------------------------------------------------------- build
    def to_xml(self) -> str:
        validate_name(self.name)
        if self.topology and self.topology.vcpus != self.vcpus:
            raise ValidationError(
                f"CPU topology {self.topology.sockets}x{self.topology.cores}x"
                f"{self.topology.threads} gives {self.topology.vcpus} vCPUs, not {self.vcpus}",
                hint="make sockets*cores*threads equal --vcpus",
            )
        dom = etree.Element("domain", type=self.domain_type)
        _sub(dom, "name", self.name)
        if self.uuid:
            _sub(dom, "uuid", self.uuid)
        if self.description:
            _sub(dom, "description", self.description)
        if self.owned_files:
            _sub(dom, "metadata").append(owned_files_element(self.owned_files))
        _sub(dom, "memory", str(self.memory_bytes // 1024), unit="KiB")
        _sub(dom, "currentMemory", str(self.memory_bytes // 1024), unit="KiB")
        _sub(dom, "vcpu", str(self.vcpus), placement="static")
        os_el = _sub(dom, "os")
        _sub(os_el, "type", "hvm", arch=self.arch, machine=self.machine)
        if self.kernel:
            _sub(os_el, "kernel", self.kernel)
            if self.initrd:
                _sub(os_el, "initrd", self.initrd)
            if self.cmdline:
                _sub(os_el, "cmdline", self.cmdline)
        elif not self.per_device_boot:
            for dev in self.boot:
                _sub(os_el, "boot", dev=dev)
        features = _sub(dom, "features")
        if self.acpi:
            _sub(features, "acpi")
        if self.apic:
            _sub(features, "apic")
        if self.topology:
            cpu = _sub(dom, "cpu")
            _sub(cpu, "topology", sockets=str(self.topology.sockets), dies="1",
                 cores=str(self.topology.cores), threads=str(self.topology.threads))
        _sub(dom, "on_poweroff", "destroy")
        _sub(dom, "on_reboot", "restart")
        _sub(dom, "on_crash", "destroy")
        devices = _sub(dom, "devices")
        disk_orders = self._disk_boot_orders()
        for disk in self.disks:
            el = disk_element(disk)
            if disk.target in disk_orders:
                _sub(el, "boot", order=str(disk_orders[disk.target]))
            devices.append(el)
        for nic in self.nics:
            devices.append(nic_element(nic))
        if self.serial_console:
            serial = _sub(devices, "serial", type="pty")
            _sub(serial, "target", port="0")
            console = _sub(devices, "console", type="pty")
            _sub(console, "target", type="serial", port="0")
        if self.agent_channel:
            channel = _sub(devices, "channel", type="unix")
            _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
        if self.vnc:
            graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes",
                            listen=self.vnc_listen)
            _sub(graphics, "listen", type="address", address=self.vnc_listen)
            video = _sub(devices, "video")
            _sub(video, "model", type="vga")
        _sub(devices, "memballoon", model="virtio")
        return etree.tostring(dom, pretty_print=True, encoding="unicode")

    @property
    def per_device_boot(self) -> bool:
        """A NIC asks for a boot position: libvirt then refuses ``<os><boot dev>``, so
        every bootable device gets a ``<boot order>`` instead."""
        return not self.kernel and any(n.boot_order is not None for n in self.nics)

    def _disk_boot_orders(self) -> dict[str, int]:
        """With per-device boot: the disks (then cdroms, as ``boot`` listed hd/cdrom)
        boot after the NICs' positions, in their order."""
        if not self.per_device_boot:
            return {}
        taken = {n.boot_order for n in self.nics if n.boot_order is not None}
        order, orders = 0, {}
        kinds = [("disk" if dev == "hd" else "cdrom") for dev in self.boot
                 if dev in ("hd", "cdrom")] or ["disk"]
        for kind in kinds:
            for disk in self.disks:
                if disk.device != kind:
                    continue
                order += 1
                while order in taken:
                    order += 1
                orders[disk.target] = order
        return orders

    # ---------------------------------------------------------------- parse
    @classmethod
    def from_xml(cls, xml: str) -> DomainSpec:
        return cls.from_element(parse_xml(xml))

    @classmethod
    def from_element(cls, root: etree._Element) -> DomainSpec:
        memory = root.find("memory")
        mem_bytes = _to_bytes(int(memory.text or 0), memory.get("unit", "KiB")) if (
            memory is not None) else 0
        topo_el = root.find("cpu/topology")
        topology = None
        if topo_el is not None:
            topology = Topology(int(topo_el.get("sockets", 1)), int(topo_el.get("cores", 1)),
                                int(topo_el.get("threads", 1)))
        os_type = root.find("os/type")
        spec = cls(
            name=root.findtext("name") or "",
            uuid=root.findtext("uuid"),
            description=root.findtext("description"),
            memory_bytes=mem_bytes,
            vcpus=int(root.findtext("vcpu") or 1),
            domain_type=root.get("type", "qemu"),
            topology=topology,
            machine=os_type.get("machine", "pc") if os_type is not None else "pc",
            arch=os_type.get("arch", "x86_64") if os_type is not None else "x86_64",
            kernel=root.findtext("os/kernel"),
            initrd=root.findtext("os/initrd"),
            cmdline=root.findtext("os/cmdline"),
            boot=[b.get("dev", "hd") for b in root.findall("os/boot")] or (
            ["hd"] if root.find("devices/*/boot") is None else _boot_devs(root)),
            acpi=root.find("features/acpi") is not None,
            apic=root.find("features/apic") is not None,
            disks=[parse_disk(d) for d in root.findall("devices/disk")],
            nics=[n for n in (parse_nic(i) for i in root.findall("devices/interface")) if n],
            agent_channel=DomainDocument.of_element(root).has_agent_channel(),
            vnc=root.find("devices/graphics[@type='vnc']") is not None,
            serial_console=root.find("devices/serial") is not None,
            owned_files=parse_owned_files(root.find(f"metadata/{{{METADATA_NS}}}vm")),
        )
        graphics = root.find("devices/graphics[@type='vnc']")
        if graphics is not None:
            spec.vnc_listen = graphics.get("listen", "127.0.0.1")
            port = int(graphics.get("port", "-1"))
            spec.vnc_port = port if port > 0 else None
        return spec


def disk_element(disk: DiskSpec) -> etree._Element:
    kind = "volume" if disk.pool and disk.volume else "file"
    el = etree.Element("disk", type=kind, device=disk.device)
    driver = _sub(el, "driver", name="qemu", type=disk.fmt)
    if disk.cache:
        driver.set("cache", disk.cache)
    if disk.io:
        driver.set("io", disk.io)
    if kind == "volume":
        _sub(el, "source", pool=str(disk.pool), volume=str(disk.volume))
    elif disk.source:
        _sub(el, "source", file=disk.source)
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly or disk.device == "cdrom":
        _sub(el, "readonly")
    set_iotune(el, disk.iotune)
    return el


def set_iotune(disk: etree._Element, limits: dict[str, int]) -> None:
    """Replace a ``<disk>``'s ``<iotune>`` by ``limits`` (libvirt's element names; a 0
    is no limit and is left out; none left: no ``<iotune>``)."""
    for old in disk.findall("iotune"):
        disk.remove(old)
    wanted = {k: v for k, v in limits.items() if v}
    if wanted:
        tune = etree.SubElement(disk, "iotune")
        for key, value in wanted.items():
            etree.SubElement(tune, key).text = str(int(value))


def parse_iotune(disk: etree._Element) -> dict[str, int]:
    """A ``<disk>``'s ``<iotune>`` numbers (the non-zero ones), by element name."""
    tune = disk.find("iotune")
    found: dict[str, int] = {}
    for child in tune if tune is not None else ():
        text = (child.text or "").strip()
        if isinstance(child.tag, str) and text.isdigit() and int(text):
            found[child.tag] = int(text)
    return found


def disk_xml(disk: DiskSpec) -> str:
    return etree.tostring(disk_element(disk), encoding="unicode")


def controller_xml(kind: str, model: str | None = None) -> str:
    """A ``<controller>`` device for attachDeviceFlags (libvirt picks index and address)."""
    el = etree.Element("controller", type=kind)
    if model:
        el.set("model", model)
    return etree.tostring(el, encoding="unicode")


def has_controller(domain_xml: str, kind: str) -> bool:
    return DomainDocument(domain_xml).has_controller(kind)


def parse_disk(el: etree._Element) -> DiskSpec:
    driver = el.find("driver")
    source = el.find("source")
    target = el.find("target")
    alias = el.find("alias")
    src = None
    node = storage = None
    if source is not None:
        src = source.get("file") or source.get("dev") or source.get("name") \
            or source.get("volume")
        index = source.get("index")
        node = format_node(index) if index else None
        storage = storage_node(index) if index else None
    device = el.get("device", "disk")
    return DiskSpec(
        target=target.get("dev", "") if target is not None else "",
        source=src,
        fmt=driver.get("type", "raw") if driver is not None else "raw",
        bus=target.get("bus", "virtio") if target is not None else "virtio",
        device="cdrom" if device == "cdrom" else "disk",
        cache=driver.get("cache") if driver is not None else None,
        readonly=el.find("readonly") is not None,
        node_name=node,
        alias=alias.get("name") if alias is not None else None,
        storage_node_name=storage,
        pool=source.get("pool") if source is not None else None,
        volume=source.get("volume") if source is not None else None,
        io=driver.get("io") if driver is not None else None,
        iotune=parse_iotune(el),
    )


def nic_element(nic: NicSpec) -> etree._Element:
    el = etree.Element("interface", type=nic.kind)
    if nic.mac:
        _sub(el, "mac", address=nic.mac)
    _sub(el, "source", **{nic.kind: nic.source})
    _sub(el, "model", type=nic.model)
    if nic.link is not None:
        _sub(el, "link", state=nic.link)
    if nic.virtualport is not None:
        _sub(el, "virtualport", type=nic.virtualport)
    if nic.queues is not None:
        _sub(el, "driver", queues=str(nic.queues))
    if nic.boot_order is not None:
        _sub(el, "boot", order=str(nic.boot_order))
    _set_vlan(el, nic.vlan)
    _set_bandwidth(el, nic.inbound, nic.outbound)
    return el


def _set_vlan(el: etree._Element, vlan: Vlan | None) -> None:
    """Replace the interface's ``<vlan>`` (none: remove it)."""
    for old in el.findall("vlan"):
        el.remove(old)
    if vlan is None:
        return
    node = etree.SubElement(el, "vlan")
    if vlan.trunk:
        node.set("trunk", "yes")
    for tag in vlan.tags:
        t = etree.SubElement(node, "tag", id=str(tag))
        if vlan.native == tag:
            t.set("nativeMode", "untagged")


def _set_bandwidth(el: etree._Element, inbound: Rate | None, outbound: Rate | None) -> None:
    """Replace the interface's ``<bandwidth>`` (both None: remove it, no limit)."""
    for old in el.findall("bandwidth"):
        el.remove(old)
    if inbound is None and outbound is None:
        return
    node = etree.SubElement(el, "bandwidth")
    for name, rate in (("inbound", inbound), ("outbound", outbound)):
        if rate is None:
            continue
        child = etree.SubElement(node, name, average=str(rate.average))
        if rate.peak is not None:
            child.set("peak", str(rate.peak))
        if rate.burst is not None:
            child.set("burst", str(rate.burst))


def _parse_rate(el: etree._Element | None) -> Rate | None:
    if el is None or not el.get("average"):
        return None
    peak, burst = el.get("peak"), el.get("burst")
    return Rate(average=int(el.get("average", "0")), peak=int(peak) if peak else None,
                burst=int(burst) if burst else None)


def _parse_vlan(el: etree._Element | None) -> Vlan | None:
    if el is None:
        return None
    tags = [t for t in el.findall("tag") if t.get("id")]
    if not tags:
        return None
    trunk = el.get("trunk") == "yes" or len(tags) > 1
    native = next((int(t.get("id", "0")) for t in tags if t.get("nativeMode")), None)
    return Vlan(tags=tuple(int(t.get("id", "0")) for t in tags), trunk=trunk,
                native=native if trunk else None)


def nic_xml(nic: NicSpec) -> str:
    """An ``<interface>`` device for attachDeviceFlags."""
    return etree.tostring(nic_element(nic), encoding="unicode")


def _boot_devs(root: etree._Element) -> list[str]:
    """``os/boot``-style device kinds of a definition that uses per-device boot order."""
    kinds = []
    for disk in sorted(root.findall("devices/disk[boot]"),
                       key=lambda d: _int_attr(d.find("boot"), "order") or 0):
        kind = "cdrom" if disk.get("device") == "cdrom" else "hd"
        if kind not in kinds:
            kinds.append(kind)
    return kinds or ["hd"]


def _int_attr(el: etree._Element | None, name: str) -> int | None:
    value = el.get(name) if el is not None else None
    return int(value) if value is not None and value.isdigit() else None


def _update_xml(el: etree._Element) -> str:
    """An ``<interface>`` for updateDeviceFlags. A running VM's NIC on a libvirt network
    of forward mode bridge (a host or Open vSwitch bridge) reads back as ``type='bridge'``
    with ``<source network=...>``; sent so, libvirt takes the update for a move to a plain
    Linux bridge and fails ("Unable to add bridge ... port vnetN: Operation not
    supported"), so it goes back as ``type='network'``."""
    source = el.find("source")
    if el.get("type") == "bridge" and source is not None and source.get("network"):
        el.set("type", "network")
    return etree.tostring(el, encoding="unicode")


def parse_nic(el: etree._Element) -> NicSpec | None:
    kind = el.get("type")
    if kind not in ("network", "bridge"):
        return None
    source = el.find("source")
    mac = el.find("mac")
    model = el.find("model")
    target = el.find("target")
    link = el.find("link")
    alias = el.find("alias")
    virtualport = el.find("virtualport")
    if kind == "bridge" and source is not None and source.get("network"):
        kind = "network"  # a running VM's NIC on a bridge-mode (host/OVS bridge) network
    return NicSpec(
        kind="network" if kind == "network" else "bridge",
        source=source.get(kind, "") if source is not None else "",
        model=model.get("type", "virtio") if model is not None else "virtio",
        mac=mac.get("address") if mac is not None else None,
        target_dev=target.get("dev") if target is not None else None,
        link="down" if link is not None and link.get("state") == "down" else (
            "up" if link is not None else None),
        alias=alias.get("name") if alias is not None else None,
        inbound=_parse_rate(el.find("bandwidth/inbound")),
        outbound=_parse_rate(el.find("bandwidth/outbound")),
        vlan=_parse_vlan(el.find("vlan")),
        virtualport=virtualport.get("type") if virtualport is not None else None,
        queues=_int_attr(el.find("driver"), "queues"),
        boot_order=_int_attr(el.find("boot"), "order"),
    )


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str
         ) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib=attrs)
    if text is not None:
        el.text = text
    return el


_UNIT_FACTORS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2,
                 "mib": 1024**2, "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def _to_bytes(value: int, unit: str) -> int:
    return value * _UNIT_FACTORS.get(unit.lower(), 1024)


def set_name_and_uuid(xml: str, name: str) -> etree._Element:
    """Parse ``xml`` and give it a new name and no UUID/MACs (for clones)."""
    root = parse_xml(xml)
    set_name_and_uuid_of(root, name)
    return root


def set_owned_files(root: etree._Element, files: list[OwnedFile]) -> None:
    """Replace kvmops' owned-files record in a domain document (e.g. for a clone)."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.Element("metadata")
        anchor = root.find("uuid") if root.find("uuid") is not None else root.find("name")
        if anchor is not None:
            anchor.addnext(metadata)
        else:
            root.insert(0, metadata)
    for old in metadata.findall(f"{{{METADATA_NS}}}vm"):
        metadata.remove(old)
    if files:
        metadata.append(owned_files_element(files))


# ---------------------------------------------------------------------- editing
class DomainDocument:
    """An existing domain XML, read and edited in place.

    Everything kvmops does not model is kept as it is (virt-install's way): an
    edit changes only the elements it names, and :meth:`to_xml` gives back the
    whole document. Use this (never raw lxml) to read or change a VM's XML.
    """

    def __init__(self, xml: str | bytes) -> None:
        self._root = parse_xml(xml)

    @classmethod
    def of_element(cls, root: etree._Element) -> DomainDocument:
        doc = cls.__new__(cls)
        doc._root = root
        return doc

    def to_xml(self) -> str:
        return etree.tostring(self._root, encoding="unicode")

    def spec(self) -> DomainSpec:
        """What kvmops models of the document."""
        return DomainSpec.from_element(self._root)

    # ---------------------------------------------------------------- reading
    def boots_by_device_kind(self) -> bool:
        """``<os><boot dev>``: libvirt then refuses any device's ``<boot order>``."""
        return self._root.find("os/boot") is not None

    def boot_orders(self) -> set[int]:
        """The ``<boot order>`` positions the devices hold."""
        return {n for b in self._root.findall("devices/*/boot")
                if (n := _int_attr(b, "order")) is not None}

    @property
    def name(self) -> str:
        return self._root.findtext("name") or ""

    def disks(self) -> list[DiskSpec]:
        return [parse_disk(el) for el in self._root.findall("devices/disk")]

    def targets(self) -> list[str]:
        return [d.target for d in self.disks()]

    def find_disk(self, target: str) -> DiskSpec | None:
        el = self._disk(target)
        return parse_disk(el) if el is not None else None

    def disk_device_xml(self, target: str) -> str | None:
        """The ``<disk>`` element of ``target`` as libvirt gave it (for a detach)."""
        el = self._disk(target)
        return etree.tostring(el, encoding="unicode") if el is not None else None

    def disk_files(self, device: DiskDevice | None = None) -> dict[str, tuple[str, str]]:
        """target -> (file, format) of the file-backed disks (of one ``device`` kind)."""
        found: dict[str, tuple[str, str]] = {}
        for el in self._root.findall("devices/disk"):
            if device is not None and el.get("device", "disk") != device:
                continue
            target = el.find("target")
            source = el.find("source")
            driver = el.find("driver")
            if target is not None and source is not None and source.get("file"):
                fmt = driver.get("type", "raw") if driver is not None else "raw"
                found[target.get("dev", "")] = (source.get("file", ""), fmt)
        return found

    def chain_files(self) -> list[tuple[str, str]]:
        """(file, format) of every disk's image and, in a running VM's live XML, the
        backing files libvirt lists as nested ``<backingStore>``, top first."""
        found: list[tuple[str, str]] = []
        for disk in self._root.iterfind("devices/disk"):
            # The disk's own source uses <driver type>, nested backing stores <format type>.
            level: etree._Element | None = disk
            fmt_el = disk.find("driver")
            while level is not None:
                source = level.find("source")
                name = source.get("file") if source is not None else None
                if name:
                    found.append((name, fmt_el.get("type", "raw") if fmt_el is not None
                                  else "raw"))
                level = level.find("backingStore")
                fmt_el = level.find("format") if level is not None else None
        return found

    def disk_device_kinds(self) -> list[str]:
        """libvirt's ``device`` of each disk, in :meth:`disks` order (disk, cdrom,
        floppy, lun: :class:`DiskSpec` models only the first two)."""
        return [el.get("device", "disk") for el in self._root.findall("devices/disk")]

    def uses_pflash(self) -> bool:
        """UEFI firmware with writable NVRAM (internal snapshots are refused then)."""
        loader = self._root.find("os/loader")
        os_el = self._root.find("os")
        return (loader is not None and loader.get("type") == "pflash") or (
            os_el is not None and os_el.get("firmware") == "efi")

    def host_devices(self) -> list[str]:
        """Passed-through host devices: ``<hostdev>`` and ``<interface type='hostdev'>``."""
        return hostdevs_in(self._root)

    def top_level_tags(self) -> list[str]:
        """The tags of ``<domain>``'s children (``prefix:name`` for foreign namespaces)."""
        return [_qualified_tag(c) for c in self._root if isinstance(c.tag, str)]

    def device_tags(self) -> list[str]:
        """The tags of ``<devices>``' children, in document order."""
        devices = self._root.find("devices")
        return [_qualified_tag(c) for c in (devices if devices is not None else [])
                if isinstance(c.tag, str)]

    def channel_names(self) -> list[str | None]:
        """The target names of every ``<channel>`` (the agent's is AGENT_CHANNEL)."""
        return [t.get("name") for t in self._root.findall("devices/channel/target")]

    def nics(self) -> list[NicSpec]:
        """The network and bridge interfaces (the kinds :class:`NicSpec` models)."""
        return [n for n in (parse_nic(el) for el in self._root.findall("devices/interface"))
                if n is not None]

    def interface_macs(self) -> list[str]:
        """The MAC of every ``<interface>`` of any kind, lower-cased."""
        return [m.get("address", "").lower()
                for m in self._root.findall("devices/interface/mac") if m.get("address")]

    def nic_device_xml(self, mac: str) -> str | None:
        """The ``<interface>`` with ``mac`` as libvirt gave it (for a detach or update)."""
        el = self._nic(mac)
        return etree.tostring(el, encoding="unicode") if el is not None else None

    def set_nic_link(self, mac: str, state: LinkState) -> str:
        """Set ``<link state>`` of the interface with ``mac``; its new XML."""
        el = self._nic(mac)
        if el is None:
            raise NotFoundError(f"VM '{self.name}' has no NIC with MAC {mac}")
        link = el.find("link")
        if link is None:
            link = etree.SubElement(el, "link")
        link.set("state", state)
        return _update_xml(el)

    def set_nic_qos(self, mac: str, inbound: Rate | None, outbound: Rate | None,
                    vlan: Vlan | None) -> str:
        """Set the ``<bandwidth>`` and ``<vlan>`` of the interface with ``mac`` (None:
        none); its new XML for updateDeviceFlags."""
        el = self._nic(mac)
        if el is None:
            raise NotFoundError(f"VM '{self.name}' has no NIC with MAC {mac}")
        _set_vlan(el, vlan)
        _set_bandwidth(el, inbound, outbound)
        return _update_xml(el)

    def _nic(self, mac: str) -> etree._Element | None:
        for el in self._root.findall("devices/interface"):
            m = el.find("mac")
            if m is not None and m.get("address", "").lower() == mac.lower():
                return el
        return None

    def interface_count(self) -> int:
        """Every ``<interface>``, including kinds :class:`NicSpec` does not model."""
        return len(self._root.findall("devices/interface"))

    def has_controller(self, kind: str) -> bool:
        return self._root.find(f"devices/controller[@type='{kind}']") is not None

    def has_agent_channel(self) -> bool:
        return any(t.get("name") == AGENT_CHANNEL
                   for t in self._root.findall("devices/channel/target"))

    def owned_files(self) -> list[OwnedFile]:
        return parse_owned_files(self._root.find(f"metadata/{{{METADATA_NS}}}vm"))

    def disk_nodes(self) -> dict[str, str]:
        """QEMU format node -> disk target (live XML of a running VM)."""
        return {d.node_name: d.target for d in self.disks() if d.node_name}

    # ---------------------------------------------------------------- editing
    def point_disk(self, target: str, path: str, fmt: str) -> None:
        """Make disk ``target`` use image ``path`` of format ``fmt`` (the backing chain
        libvirt recorded for the old image is dropped; libvirt reads the new one)."""
        el = self._disk(target)
        if el is None:
            raise NotFoundError(f"VM '{self.name}' has no disk {target}")
        source = el.find("source")
        if source is None:
            source = etree.SubElement(el, "source")
        source.set("file", path)
        driver = el.find("driver")
        if driver is not None:
            driver.set("type", fmt)
        for backing in el.findall("backingStore"):
            el.remove(backing)

    def set_disk_iotune(self, target: str, limits: dict[str, int]) -> None:
        """Disk ``target``'s I/O limits (libvirt's ``<iotune>`` names; 0: none)."""
        el = self._disk(target)
        if el is None:
            raise NotFoundError(f"VM '{self.name}' has no disk {target}",
                                hint=f"see 'kvmops vm disk list {self.name}'")
        set_iotune(el, limits)

    def set_disk_format(self, target: str, fmt: str) -> None:
        """The format libvirt opens disk ``target``'s image as (``<driver type>``)."""
        el = self._disk(target)
        driver = el.find("driver") if el is not None else None
        if el is None:
            raise NotFoundError(f"VM '{self.name}' has no disk {target}")
        if driver is None:
            driver = etree.SubElement(el, "driver", name="qemu")
        driver.set("type", fmt)

    def set_memory(self, size: int, *, maximum: int | None = None) -> None:
        """Current memory (and the maximum, default the same) in bytes, written in KiB."""
        for tag, value in (("memory", maximum or size), ("currentMemory", size)):
            el = self._root.find(tag)
            if el is None:
                el = etree.SubElement(self._root, tag)
            el.text = str(value // 1024)
            el.set("unit", "KiB")

    def set_vcpus(self, count: int) -> None:
        """The vCPU count (a CPU topology that no longer matches is dropped)."""
        el = self._root.find("vcpu")
        if el is None:
            el = etree.SubElement(self._root, "vcpu", placement="static")
        el.text = str(count)
        topology = self._root.find("cpu/topology")
        if topology is not None:
            product = 1
            for key in ("sockets", "dies", "cores", "threads"):
                product *= int(topology.get(key, "1"))
            if product != count:
                parent = topology.getparent()
                if parent is not None:
                    parent.remove(topology)

    def for_clone(self, name: str) -> None:
        """A new name, no UUID and no MAC addresses (libvirt generates new ones)."""
        set_name_and_uuid_of(self._root, name)

    def set_owned_files(self, files: list[OwnedFile]) -> None:
        set_owned_files(self._root, files)

    def _disk(self, target: str) -> etree._Element | None:
        for el in self._root.findall("devices/disk"):
            t = el.find("target")
            if t is not None and t.get("dev") == target:
                return el
        return None


def hostdevs_in(root: etree._Element) -> list[str]:
    """Passed-through host devices: ``<hostdev>`` and ``<interface type='hostdev'>``."""
    found = []
    for el in root.findall("devices/hostdev"):
        addr = el.find("source/address")
        vendor = el.find("source/vendor")
        product = el.find("source/product")
        if addr is not None and addr.get("bus") is not None and addr.get("domain") is not None:
            desc = (f"{el.get('type', 'pci')} {addr.get('domain', '0')[2:] or '0'}:"
                    f"{addr.get('bus', '0')[2:]}:{addr.get('slot', '0')[2:]}."
                    f"{addr.get('function', '0')[2:]}")
        elif vendor is not None and product is not None:
            desc = f"{el.get('type', 'usb')} {vendor.get('id')}:{product.get('id')}"
        else:
            desc = el.get("type", "hostdev")
        found.append(desc)
    found += [f"interface {i.findtext('mac') or ''}".strip()
              for i in root.findall("devices/interface[@type='hostdev']")]
    return found


def _qualified_tag(el: etree._Element) -> str:
    qname = etree.QName(el)
    if qname.namespace and qname.namespace != METADATA_NS:
        prefix = el.prefix or "ns"
        return f"{prefix}:{qname.localname}"
    return qname.localname


def set_name_and_uuid_of(root: etree._Element, name: str) -> None:
    name_el = root.find("name")
    if name_el is None:
        name_el = etree.SubElement(root, "name")
    name_el.text = name
    for tag in ("uuid",):
        el = root.find(tag)
        if el is not None:
            root.remove(el)
    for mac in root.findall("devices/interface/mac"):
        parent = mac.getparent()
        if parent is not None:
            parent.remove(mac)


# ---------------------------------------------------------------------- snapshots
SnapshotMode = Literal["no", "internal", "external"]


@dataclass(frozen=True)
class SnapshotDiskSpec:
    """One ``<disks/disk>`` of a snapshot: ``overlay`` is the external file written since."""

    target: str
    mode: str  # no, internal, external
    overlay: str | None = None


def snapshot_xml(name: str, *, description: str | None = None,
                 memory: SnapshotMode | None = None,
                 disks: list[SnapshotDiskSpec] | None = None) -> str:
    """A ``<domainsnapshot>`` request for ``virDomainSnapshotCreateXML``."""
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = name
    if description:
        etree.SubElement(root, "description").text = description
    if memory is not None:
        etree.SubElement(root, "memory", snapshot=memory)
    if disks is not None:
        disks_el = etree.SubElement(root, "disks")
        for disk in disks:
            if disk.mode != "external" or disk.overlay is None:
                etree.SubElement(disks_el, "disk", name=disk.target, snapshot=disk.mode)
                continue
            el = etree.SubElement(disks_el, "disk", name=disk.target, snapshot="external",
                                  type="file")
            etree.SubElement(el, "driver", type="qcow2")
            etree.SubElement(el, "source", file=disk.overlay)
    return etree.tostring(root, encoding="unicode")


class SnapshotDocument:
    """A snapshot's XML (``virDomainSnapshotGetXMLDesc``), read and edited in place."""

    def __init__(self, xml: str | bytes) -> None:
        self._root = parse_xml(xml)

    def to_xml(self) -> str:
        return etree.tostring(self._root, encoding="unicode")

    @property
    def name(self) -> str:
        return self._root.findtext("name") or ""

    @property
    def state(self) -> str:
        return self._root.findtext("state") or ""

    @property
    def description(self) -> str | None:
        return self._root.findtext("description")

    @property
    def parent(self) -> str | None:
        return self._root.findtext("parent/name")

    @property
    def created(self) -> int:
        """Creation time, seconds since the epoch."""
        return int(self._root.findtext("creationTime") or 0)

    @property
    def memory_mode(self) -> str | None:
        memory = self._root.find("memory")
        return memory.get("snapshot") if memory is not None else None

    def disks(self) -> list[SnapshotDiskSpec]:
        found = []
        for el in self._root.findall("disks/disk"):
            mode = el.get("snapshot", "no")
            source = el.find("source")
            found.append(SnapshotDiskSpec(
                el.get("name", ""), mode,
                source.get("file") if mode == "external" and source is not None else None))
        return found

    def domain(self) -> DomainDocument | None:
        """The VM's definition at the snapshot."""
        inner = self._root.find("domain")
        return DomainDocument(etree.tostring(inner)) if inner is not None else None

    def set_overlay(self, target: str, path: str) -> None:
        """Make the snapshot's disk ``target`` name ``path`` as its overlay."""
        for el in self._root.findall("disks/disk"):
            if el.get("name", "") != target:
                continue
            source = el.find("source")
            if source is None:
                source = etree.SubElement(el, "source")
            source.set("file", path)

    def move_files(self, moved: dict[str, str]) -> None:
        """Name each file of ``moved`` (old path -> new path) by its new path wherever the
        snapshot names it: the disks of the VM's definitions inside it (``<domain>``,
        ``<inactiveDomain>``, with their owned-files records) and its ``<disks>`` (a cold
        migration's copies)."""
        for where in ("domain", "inactiveDomain"):
            for el in self._root.findall(f"{where}/devices/disk/source"):
                if el.get("file") in moved:
                    el.set("file", moved[el.get("file", "")])
            for el in self._root.iterfind(f"{where}/metadata//{{{METADATA_NS}}}file"):
                if el.get("path") in moved:
                    el.set("path", moved[el.get("path", "")])
        for el in self._root.findall("disks/disk/source"):
            if el.get("file") in moved:
                el.set("file", moved[el.get("file", "")])

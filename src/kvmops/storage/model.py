"""A libvirt storage pool or volume as a typed spec, its XML, and the XML read back.

:class:`PoolSpec` is what ``kvmops pool create`` (and ``POST /api/v1/pools``) asks for;
it checks itself when made (one-line errors naming the bad value and what to do) and
builds libvirt's pool XML with lxml (:meth:`PoolSpec.to_xml`). :func:`parse_pool` and
:func:`parse_volume` read any pool's or volume's XML back, including pools kvmops did
not create.

Pool types (libvirt's ``<pool type=...>``; see libvirt's "Storage pool and volume XML
format"):

- ``dir``: a directory of image files (``<target><path>``).
- ``fs``: a block device (or a loop device over a file) holding a file system that
  libvirt mounts on ``<target><path>`` (``<source><device path><format type='ext4'>``);
  ``--build`` makes the file system (libvirt's pool-build without overwrite).
- ``iscsi-direct``: one iSCSI target reached by libvirt and QEMU's user-space
  initiator (libiscsi), no kernel initiator (``<source><host name port><device
  path=TARGET-IQN><initiator><iqn name>``); its volumes are the target's LUNs
  (``unit:0:0:N``): they cannot be created or removed from here.
- ``netfs``: an NFS/CIFS/GlusterFS export mounted on ``<target><path>``.
- ``logical``: an LVM volume group (``<source><name>``, optional ``<device>``
  physical volumes, ``<format type='lvm2'>``), volumes are logical volumes.
- ``rbd``: a Ceph RBD pool (``<source><name>``, monitors as ``<host>``, cephx
  ``<auth>`` with a libvirt secret).

``dir``, ``fs`` and ``iscsi-direct`` are tested on the kvmops test host. ``netfs``,
``logical`` and ``rbd`` are built from libvirt's documented XML and checked against
libvirt's schema (``virt-xml-validate``), but the test host has no NFS server, no
device-mapper and no Ceph: they are untested there.

Volume formats are always named (``raw`` or ``qcow2``), never probed from a file's
first bytes; volumes of block pools (``iscsi-direct``, ``logical``, ``rbd``) are raw.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from lxml import etree

from kvmops.errors import ValidationError
from kvmops.records import Record

PoolType = Literal["dir", "fs", "iscsi-direct", "netfs", "logical", "rbd"]
POOL_TYPES: tuple[str, ...] = get_args(PoolType)
#: The pool types the kvmops test host runs end to end.
TESTED_TYPES = ("dir", "fs", "iscsi-direct")
#: Pools whose volumes are files under the pool's target directory.
FILE_TYPES = ("dir", "fs", "netfs")
#: Pools whose volumes are block devices or network volumes: raw only.
BLOCK_TYPES = ("iscsi-direct", "logical", "rbd")
VOLUME_FORMATS = ("raw", "qcow2")
FS_FORMATS = ("ext4", "ext3", "ext2", "xfs")
NETFS_FORMATS = ("nfs", "cifs", "glusterfs")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
# Volume names: one path component (libvirt puts file volumes at TARGET/NAME).
VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}$")
# iSCSI qualified names (RFC 3720 3.2.6.3.1): iqn.YYYY-MM.reversed.domain[:anything].
IQN_RE = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9.:_-]+)?$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
PATH_RE = re.compile(r"^/[^\x00\n]*$")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


# ------------------------------------------------------------------------- checks
def check_name(name: str, what: str = "pool") -> str:
    """Pool names: as VM and network names (letters, digits, ``_.+-``; 1-64)."""
    if not NAME_RE.match(name):
        raise ValidationError(
            f"invalid {what} name '{name}'",
            hint="use 1-64 letters, digits, '_', '.', '+' or '-', starting with a letter "
                 "or digit")
    return name


def check_volume_name(name: str) -> str:
    """A volume name: one file name (no '/', not '.'/'..'), or a LUN name such as
    ``unit:0:0:1``."""
    if not VOLUME_RE.match(name):
        raise ValidationError(
            f"invalid volume name '{name}'",
            hint="use 1-128 letters, digits, '_', '.', '+', ':' or '-', starting with a "
                 "letter or digit (no '/')")
    return name


def check_format(fmt: str | None, what: str = "volume") -> str:
    if not fmt:
        raise ValidationError(f"no format given for the {what}",
                              hint="name it: --format raw or --format qcow2 (kvmops never "
                                   "guesses a format from a file's bytes)")
    if fmt not in VOLUME_FORMATS:
        raise ValidationError(f"unknown {what} format '{fmt}'",
                              hint=f"use one of {', '.join(VOLUME_FORMATS)}")
    return fmt


def check_iqn(value: str, option: str) -> str:
    if len(value) > 223 or not IQN_RE.match(value):
        raise ValidationError(f"{option} '{value}' is not an iSCSI qualified name",
                              hint="e.g. iqn.2024-01.org.example:storage1 (lower-case "
                                   "iqn.YYYY-MM.reversed-domain[:name])")
    return value


def check_host(value: str, option: str = "--host") -> str:
    """A host name or an IP address (no port, no scheme)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253 or not HOST_RE.match(value):
        raise ValidationError(f"{option} '{value}' is not a host name or IP address",
                              hint="give a name such as nas.example.org or an address such "
                                   "as 127.0.0.1 (the port goes in --port)")
    return value


def check_port(port: int | None) -> int | None:
    if port is not None and not 1 <= port <= 65535:
        raise ValidationError(f"--port {port} is not a TCP port", hint="use 1-65535")
    return port


def check_abs_path(value: str, option: str) -> str:
    if not PATH_RE.match(value) or any(part in (".", "..") for part in value.split("/")):
        raise ValidationError(f"{option} '{value}' is not an absolute path",
                              hint="give an absolute path without '.' or '..' components")
    return value


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class PoolSpec:
    """A pool to create; checked when made (:class:`ValidationError` with one line).

    Which fields a type takes: ``dir``: target; ``fs``: device, target, fs_format;
    ``iscsi-direct``: host, port, target_iqn, initiator_iqn; ``netfs``: host,
    source_dir, target, netfs_format; ``logical``: source_name, devices, target;
    ``rbd``: source_name, hosts (host, port), auth_user, secret_uuid.
    """

    name: str
    type: str
    target: str | None = None  # dir/fs/netfs: the directory (mount point); logical: /dev/VG
    device: str | None = None  # fs: the block device holding the file system
    fs_format: str | None = None  # fs: ext4 (default) ...
    host: str | None = None  # iscsi-direct/netfs/rbd: the server (rbd: a monitor)
    port: int | None = None
    target_iqn: str | None = None  # iscsi-direct: the target's IQN
    initiator_iqn: str | None = None  # iscsi-direct: the IQN libvirt/QEMU log in as
    source_dir: str | None = None  # netfs: the export
    netfs_format: str | None = None  # netfs: nfs (default), cifs, glusterfs
    source_name: str | None = None  # logical: the volume group; rbd: the Ceph pool
    devices: tuple[str, ...] = ()  # logical: physical volumes (only to build the VG)
    auth_user: str | None = None  # rbd: cephx user
    secret_uuid: str | None = None  # rbd: the libvirt secret holding its key
    autostart: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.type not in POOL_TYPES:
            raise ValidationError(f"unknown pool type '{self.type}'",
                                  hint=f"use one of {', '.join(POOL_TYPES)}")
        check_port(self.port)
        allowed = _FIELDS[self.type]
        for option in self._given():
            if option not in allowed:
                raise ValidationError(f"{option} is not for a --type {self.type} pool",
                                      hint=f"a {self.type} pool takes "
                                           f"{', '.join(allowed) or 'no options'}")
        for option in _REQUIRED[self.type]:
            if option not in self._given():
                raise ValidationError(f"a --type {self.type} pool needs {option}",
                                      hint=_REQUIRED_HINT.get(option, f"give {option}"))
        getattr(self, f"_check_{self.type.replace('-', '_')}")()
        if self.target is not None:
            check_abs_path(self.target, "--target")

    def _given(self) -> dict[str, object]:
        values = {"--target": self.target, "--device": self.device or (self.devices or None),
                  "--fs-format": self.fs_format, "--host": self.host, "--port": self.port,
                  "--target-iqn": self.target_iqn, "--initiator-iqn": self.initiator_iqn,
                  "--source-dir": self.source_dir, "--netfs-format": self.netfs_format,
                  "--source-name": self.source_name,
                  "--auth-user": self.auth_user, "--secret-uuid": self.secret_uuid}
        return {k: v for k, v in values.items() if v is not None}

    # ---------------------------------------------------------------- per type
    def _check_dir(self) -> None:
        return

    def _check_fs(self) -> None:
        if self.devices or self.device is None:
            raise ValidationError("an fs pool holds one file system: give one --device")
        check_abs_path(self.device, "--device")
        if self.fs_format is not None and self.fs_format not in FS_FORMATS:
            raise ValidationError(f"unknown --fs-format '{self.fs_format}'",
                                  hint=f"use one of {', '.join(FS_FORMATS)}")

    def _check_iscsi_direct(self) -> None:
        assert self.host and self.target_iqn and self.initiator_iqn
        check_host(self.host)
        check_iqn(self.target_iqn, "--target-iqn")
        check_iqn(self.initiator_iqn, "--initiator-iqn")

    def _check_netfs(self) -> None:
        assert self.host and self.source_dir
        check_host(self.host)
        if self.netfs_format is not None and self.netfs_format not in NETFS_FORMATS:
            raise ValidationError(f"unknown --netfs-format '{self.netfs_format}'",
                                  hint=f"use one of {', '.join(NETFS_FORMATS)}")
        if self.netfs_format != "cifs":
            check_abs_path(self.source_dir, "--source-dir")

    def _check_logical(self) -> None:
        assert self.source_name
        check_name(self.source_name, "volume group")
        for device in self.devices:
            check_abs_path(device, "--device")

    def _check_rbd(self) -> None:
        assert self.host and self.source_name
        check_host(self.host)
        check_name(self.source_name, "Ceph pool")
        if (self.auth_user is None) != (self.secret_uuid is None):
            raise ValidationError("an rbd pool's cephx login needs both --auth-user and "
                                  "--secret-uuid", hint="give both (the secret is a libvirt "
                                  "secret holding the user's key), or neither")
        if self.auth_user is not None and not NAME_RE.match(self.auth_user):
            raise ValidationError(f"invalid --auth-user '{self.auth_user}'",
                                  hint="a cephx user name such as libvirt")
        if self.secret_uuid is not None and not UUID_RE.match(self.secret_uuid):
            raise ValidationError(f"--secret-uuid '{self.secret_uuid}' is not a UUID",
                                  hint="see 'virsh secret-list'")

    # ---------------------------------------------------------------- facts
    @property
    def tested_here(self) -> bool:
        return self.type in TESTED_TYPES

    @property
    def target_path(self) -> str | None:
        """The local directory the pool's files live in (dir, fs, netfs), if any."""
        if self.type == "logical":
            return self.target or f"/dev/{self.source_name}"
        return self.target

    # ---------------------------------------------------------------- XML
    def to_xml(self) -> str:
        """libvirt's ``<pool>`` document for this spec."""
        root = etree.Element("pool", type=self.type)
        _sub(root, "name", self.name)
        source = None
        if self.type != "dir":
            source = _sub(root, "source")
        if self.type == "fs":
            assert source is not None
            _sub(source, "device", path=str(self.device))
            _sub(source, "format", type=self.fs_format or "ext4")
        elif self.type == "iscsi-direct":
            assert source is not None
            host = _sub(source, "host", name=str(self.host))
            if self.port is not None:
                host.set("port", str(self.port))
            _sub(source, "device", path=str(self.target_iqn))
            initiator = _sub(source, "initiator")
            _sub(initiator, "iqn", name=str(self.initiator_iqn))
        elif self.type == "netfs":
            assert source is not None
            host = _sub(source, "host", name=str(self.host))
            if self.port is not None:
                host.set("port", str(self.port))
            _sub(source, "dir", path=str(self.source_dir))
            _sub(source, "format", type=self.netfs_format or "nfs")
        elif self.type == "logical":
            assert source is not None
            for device in self.devices:
                _sub(source, "device", path=device)
            _sub(source, "name", str(self.source_name))
            _sub(source, "format", type="lvm2")
        elif self.type == "rbd":
            assert source is not None
            _sub(source, "name", str(self.source_name))
            host = _sub(source, "host", name=str(self.host))
            if self.port is not None:
                host.set("port", str(self.port))
            if self.auth_user is not None:
                auth = _sub(source, "auth", type="ceph", username=self.auth_user)
                _sub(auth, "secret", uuid=str(self.secret_uuid))
        target_path = self.target_path
        if target_path is not None and self.type not in ("iscsi-direct", "rbd"):
            target = _sub(root, "target")
            _sub(target, "path", target_path)
        return etree.tostring(root, encoding="unicode", pretty_print=True)


_FIELDS: dict[str, tuple[str, ...]] = {
    "dir": ("--target",),
    "fs": ("--device", "--target", "--fs-format"),
    "iscsi-direct": ("--host", "--port", "--target-iqn", "--initiator-iqn"),
    "netfs": ("--host", "--port", "--source-dir", "--target", "--netfs-format"),
    "logical": ("--source-name", "--device", "--target"),
    "rbd": ("--source-name", "--host", "--port", "--auth-user", "--secret-uuid"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "dir": ("--target",),
    "fs": ("--device", "--target"),
    "iscsi-direct": ("--host", "--target-iqn", "--initiator-iqn"),
    "netfs": ("--host", "--source-dir", "--target"),
    "logical": ("--source-name",),
    "rbd": ("--source-name", "--host"),
}
_REQUIRED_HINT = {
    "--target": "name the directory the pool's volumes live in (inside an allowed image "
                "directory), e.g. --target /var/lib/kvmops/images/pool1",
    "--device": "name the block device holding the file system, e.g. --device /dev/loop3",
    "--host": "name the server, e.g. --host 127.0.0.1",
    "--target-iqn": "name the iSCSI target, e.g. --target-iqn iqn.2024-01.org.example:disk1",
    "--initiator-iqn": "name the initiator libvirt and QEMU log in as, e.g. "
                       "--initiator-iqn iqn.2024-01.org.example:kvmops",
    "--source-dir": "name the export, e.g. --source-dir /export/images",
    "--source-name": "name the volume group (logical) or Ceph pool (rbd)",
}


@dataclass(frozen=True)
class VolumeSpec:
    """A volume to create in a pool: name, size in bytes, format (always named)."""

    name: str
    capacity: int
    format: str

    def __post_init__(self) -> None:
        check_volume_name(self.name)
        check_format(self.format)
        if self.capacity < 1024 * 1024:
            raise ValidationError(f"volume '{self.name}' of {self.capacity} bytes is too "
                                  "small", hint="give at least 1M, e.g. --size 64M")

    def to_xml(self, *, pool_type: str = "dir") -> str:
        """libvirt's ``<volume>`` document; file pools get ``<target><format>`` (and
        qcow2 its compat level), block pools none (they are raw)."""
        root = etree.Element("volume")
        _sub(root, "name", self.name)
        _sub(root, "capacity", str(self.capacity), unit="bytes")
        target = _sub(root, "target")
        if pool_type in FILE_TYPES:
            root.insert(2, etree.Element("allocation", unit="bytes"))
            root[2].text = "0"
            _sub(target, "format", type=self.format)
            if self.format == "qcow2":
                _sub(target, "compat", "1.1")
        return etree.tostring(root, encoding="unicode", pretty_print=True)


# ------------------------------------------------------------------ reading back
@dataclass
class PoolInfo(Record):
    """A libvirt storage pool as ``pool list`` / ``pool info`` show it."""

    name: str
    type: str
    active: bool = False
    persistent: bool = True
    autostart: bool = False
    uuid: str | None = None
    target: str | None = None
    device: str | None = None
    fs_format: str | None = None
    host: str | None = None
    port: int | None = None
    target_iqn: str | None = None
    initiator_iqn: str | None = None
    source_dir: str | None = None
    source_name: str | None = None
    capacity: int | None = None
    allocation: int | None = None
    available: int | None = None
    volumes: int | None = None  # count; filled by the service for an active pool
    tested_here: bool = False


@dataclass
class VolumeInfo(Record):
    """A volume of a pool: libvirt's view (its ``format`` is libvirt's; kvmops checks
    it against the format it recorded before it acts on a file volume)."""

    name: str
    pool: str
    path: str | None = None
    key: str | None = None
    type: str | None = None  # file, block, network ...
    format: str | None = None
    capacity: int = 0
    allocation: int = 0
    backing: str | None = None
    used_by: list[str] = field(default_factory=list)


def _int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def _scaled(el: etree._Element | None) -> int | None:
    """A libvirt size element (bytes unless ``unit`` says otherwise)."""
    if el is None:
        return None
    value = _int(el.text)
    if value is None:
        return None
    unit = (el.get("unit") or "bytes").lower()
    factor = _UNITS.get(unit)
    return value * factor if factor else value


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4, "kb": 1000,
          "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def parse_pool(xml: str | bytes, *, active: bool = False, persistent: bool = True,
               autostart: bool = False) -> PoolInfo:
    """Any libvirt pool XML (``virsh pool-dumpxml``) as a :class:`PoolInfo`."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    source = root.find("source")
    kind = root.get("type", "")
    info = PoolInfo(name=root.findtext("name") or "", type=kind, active=active,
                    persistent=persistent, autostart=autostart, uuid=root.findtext("uuid"),
                    target=root.findtext("target/path"),
                    capacity=_scaled(root.find("capacity")),
                    allocation=_scaled(root.find("allocation")),
                    available=_scaled(root.find("available")),
                    tested_here=kind in TESTED_TYPES)
    if source is not None:
        host = source.find("host")
        if host is not None:
            info.host = host.get("name")
            info.port = _int(host.get("port"))
        device = source.find("device")
        if kind == "iscsi-direct":
            info.target_iqn = device.get("path") if device is not None else None
            iqn = source.find("initiator/iqn")
            info.initiator_iqn = iqn.get("name") if iqn is not None else None
        elif device is not None:
            info.device = device.get("path")
        fmt = source.find("format")
        if kind == "fs" and fmt is not None:
            info.fs_format = fmt.get("type")
        src_dir = source.find("dir")
        if src_dir is not None:
            info.source_dir = src_dir.get("path")
        info.source_name = source.findtext("name")
    return info


def parse_volume(xml: str | bytes, pool: str) -> VolumeInfo:
    """Any libvirt volume XML (``virsh vol-dumpxml``) as a :class:`VolumeInfo`."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    fmt = root.find("target/format")
    return VolumeInfo(
        name=root.findtext("name") or "", pool=pool, path=root.findtext("target/path"),
        key=root.findtext("key"), type=root.get("type"),
        format=fmt.get("type") if fmt is not None else None,
        capacity=_scaled(root.find("capacity")) or 0,
        allocation=_scaled(root.find("allocation")) or 0,
        backing=root.findtext("backingStore/path"))


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str
         ) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib=attrs)
    if text is not None:
        el.text = text
    return el


def disk_references(domain_xml: str) -> list[tuple[str | None, str | None, str | None]]:
    """Every disk of a domain XML as (file or device path, pool, volume)."""
    root = etree.fromstring(domain_xml.encode(), _PARSER)
    found = []
    for source in root.findall("devices/disk/source"):
        found.append((source.get("file") or source.get("dev"), source.get("pool"),
                      source.get("volume")))
    return found

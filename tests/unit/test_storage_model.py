"""The storage model: per-type checks with one-line refusals, the pool and volume XML
(element by element, and valid against libvirt's schema when virt-xml-validate is
installed), and libvirt's XML read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kvmops.errors import ValidationError
from kvmops.storage.model import (
    POOL_TYPES,
    PoolSpec,
    VolumeSpec,
    check_volume_name,
    disk_references,
    parse_pool,
    parse_volume,
)

IQN_T = "iqn.2024-01.org.kvmops:disk1"
IQN_I = "iqn.2024-01.org.kvmops:initiator"
SPECS: dict[str, dict[str, Any]] = {
    "dir": {"target": "/var/lib/kvmops/images/p"},
    "fs": {"device": "/dev/loop3", "target": "/var/lib/kvmops/images/fs"},
    "iscsi-direct": {"host": "127.0.0.1", "port": 3261, "target_iqn": IQN_T,
                     "initiator_iqn": IQN_I},
    "netfs": {"host": "nas.example.org", "source_dir": "/export/images",
              "target": "/var/lib/kvmops/images/nfs"},
    "logical": {"source_name": "vg0", "devices": ("/dev/sdb1", "/dev/sdc1")},
    "rbd": {"source_name": "rbd", "host": "mon1.example.org", "port": 6789,
            "auth_user": "libvirt", "secret_uuid": "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"},
}


def _root(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def test_every_type_has_an_example() -> None:
    assert set(SPECS) == set(POOL_TYPES)


def test_dir_and_fs_xml() -> None:
    root = _root(PoolSpec("p", "dir", **SPECS["dir"]).to_xml())
    assert root.get("type") == "dir" and root.findtext("name") == "p"
    assert root.find("source") is None
    assert root.findtext("target/path") == "/var/lib/kvmops/images/p"
    root = _root(PoolSpec("f", "fs", **SPECS["fs"]).to_xml())
    device, fmt = root.find("source/device"), root.find("source/format")
    assert device is not None and device.get("path") == "/dev/loop3"
    assert fmt is not None and fmt.get("type") == "ext4"
    assert root.findtext("target/path") == "/var/lib/kvmops/images/fs"


def test_iscsi_direct_xml_has_host_port_target_and_initiator() -> None:
    root = _root(PoolSpec("i", "iscsi-direct", **SPECS["iscsi-direct"]).to_xml())
    host, device = root.find("source/host"), root.find("source/device")
    iqn = root.find("source/initiator/iqn")
    assert host is not None and (host.get("name"), host.get("port")) == ("127.0.0.1", "3261")
    assert device is not None and device.get("path") == IQN_T
    assert iqn is not None and iqn.get("name") == IQN_I
    assert root.find("target") is None


def test_untested_types_follow_libvirts_documented_xml() -> None:
    netfs = _root(PoolSpec("n", "netfs", **SPECS["netfs"]).to_xml())
    assert netfs.find("source/dir").get("path") == "/export/images"  # type: ignore[union-attr]
    assert netfs.find("source/format").get("type") == "nfs"  # type: ignore[union-attr]
    logical = _root(PoolSpec("l", "logical", **SPECS["logical"]).to_xml())
    assert [d.get("path") for d in logical.findall("source/device")] == ["/dev/sdb1",
                                                                          "/dev/sdc1"]
    assert logical.findtext("source/name") == "vg0"
    assert logical.findtext("target/path") == "/dev/vg0"
    rbd = _root(PoolSpec("r", "rbd", **SPECS["rbd"]).to_xml())
    auth = rbd.find("source/auth")
    assert auth is not None and (auth.get("type"), auth.get("username")) == ("ceph",
                                                                             "libvirt")
    assert rbd.find("source/auth/secret").get("uuid") == SPECS["rbd"]["secret_uuid"]  # type: ignore[union-attr]
    assert rbd.find("target") is None


@pytest.mark.parametrize("kind", POOL_TYPES)
def test_parse_back(kind: str) -> None:
    spec = PoolSpec("p", kind, **SPECS[kind])
    info = parse_pool(spec.to_xml(), active=True)
    assert (info.name, info.type, info.active) == ("p", kind, True)
    assert info.tested_here == (kind in ("dir", "fs", "iscsi-direct"))
    if kind == "iscsi-direct":
        assert (info.host, info.port, info.target_iqn, info.initiator_iqn) == (
            "127.0.0.1", 3261, IQN_T, IQN_I)
    if kind == "fs":
        assert (info.device, info.fs_format) == ("/dev/loop3", "ext4")


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None,
                    reason="virt-xml-validate (libvirt-clients) is not installed")
@pytest.mark.parametrize("kind", POOL_TYPES)
def test_valid_against_libvirts_schema(kind: str, tmp_path: Path) -> None:
    pool = tmp_path / "pool.xml"
    pool.write_text(PoolSpec("p", kind, **SPECS[kind]).to_xml())
    result = subprocess.run(["virt-xml-validate", str(pool), "storagepool"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    vol = tmp_path / "vol.xml"
    vol.write_text(VolumeSpec("v1", 64 << 20, "raw").to_xml(pool_type=kind))
    result = subprocess.run(["virt-xml-validate", str(vol), "storagevol"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("kind", "extra", "fragment"), [
    ("dir", {}, "needs --target"),
    ("dir", {"target": "/x", "host": "h"}, "--host is not for a --type dir pool"),
    ("fs", {"target": "/x"}, "needs --device"),
    ("fs", {"target": "/x", "devices": ("/dev/a", "/dev/b")}, "one --device"),
    ("iscsi-direct", {"host": "127.0.0.1", "target_iqn": IQN_T}, "needs --initiator-iqn"),
    ("iscsi-direct", {"host": "127.0.0.1", "target_iqn": "disk1", "initiator_iqn": IQN_I},
     "--target-iqn 'disk1' is not an iSCSI qualified name"),
    ("iscsi-direct", {"host": "127.0.0.1:3260", "target_iqn": IQN_T,
                      "initiator_iqn": IQN_I}, "not a host name"),
    ("iscsi-direct", {"host": "h", "port": 70000, "target_iqn": IQN_T,
                      "initiator_iqn": IQN_I}, "--port 70000"),
    ("netfs", {"host": "h", "source_dir": "/e", "target": "/x", "netfs_format": "smb"},
     "unknown --netfs-format"),
    ("rbd", {"host": "h", "source_name": "p", "auth_user": "u"}, "needs both"),
    ("dir", {"target": "relative/dir"}, "not an absolute path"),
    ("dir", {"target": "/a/../b"}, "not an absolute path"),
    ("tape", {}, "unknown pool type 'tape'"),
])
def test_refusals(kind: str, extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        PoolSpec("p", kind, **extra)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_names() -> None:
    with pytest.raises(ValidationError, match="invalid pool name"):
        PoolSpec("../x", "dir", target="/x")
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ValidationError, match="invalid volume name"):
            check_volume_name(bad)
    assert check_volume_name("unit:0:0:1") == "unit:0:0:1"


def test_volume_spec_names_its_format() -> None:
    xml = _root(VolumeSpec("v.qcow2", 64 << 20, "qcow2").to_xml(pool_type="dir"))
    assert xml.findtext("capacity") == str(64 << 20)
    assert xml.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    block = _root(VolumeSpec("lv1", 64 << 20, "raw").to_xml(pool_type="logical"))
    assert block.find("target/format") is None
    with pytest.raises(ValidationError, match="no format given"):
        VolumeSpec("v", 64 << 20, "")
    with pytest.raises(ValidationError, match="unknown volume format 'vmdk'"):
        VolumeSpec("v", 64 << 20, "vmdk")
    with pytest.raises(ValidationError, match="too small"):
        VolumeSpec("v", 4096, "raw")


def test_parse_volume_and_disk_references() -> None:
    vol = parse_volume("""<volume type='network'><name>unit:0:0:1</name>
      <key>ip-127.0.0.1:3261-iscsi-x-lun-1</key><capacity unit='bytes'>67108352</capacity>
      <allocation unit='KiB'>4</allocation><target><path>ip-x-lun-1</path></target>
      </volume>""", "pool1")
    assert (vol.name, vol.pool, vol.type, vol.format) == ("unit:0:0:1", "pool1", "network",
                                                          None)
    assert (vol.capacity, vol.allocation) == (67108352, 4096)
    refs = disk_references("""<domain><devices>
      <disk type='file'><source file='/i/a.qcow2'/></disk>
      <disk type='volume'><source pool='p' volume='unit:0:0:1'/></disk>
      <disk type='file' device='cdrom'/></devices></domain>""")
    assert refs == [("/i/a.qcow2", None, None), (None, "p", "unit:0:0:1")]

"""The qcow2 header reader that vets uploads (kvmops.storage.qcow2), on headers made by
qemu-img: a plain image, one with a backing file, one with an external data file, an
encrypted one, version 2, and bytes that are no qcow2 at all."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmops.storage import qcow2


def _make(path: Path, *args: str) -> bytes:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, str(path), "16M"],
                   check=True, capture_output=True)
    data = path.read_bytes()
    head = data[:qcow2.V3_MIN_HEADER]
    return data[:qcow2.needed(head)]


def test_plain_image(tmp_path: Path) -> None:
    header = qcow2.parse(_make(tmp_path / "a.qcow2"))
    assert (header.version, header.virtual_size, header.cluster_bits) == (3, 16 << 20, 16)
    assert not (header.backing or header.data_file or header.encrypted)


def test_version_2(tmp_path: Path) -> None:
    header = qcow2.parse(_make(tmp_path / "a.qcow2", "-o", "compat=0.10"))
    assert header.version == 2 and not header.backing


def test_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"")
    header = qcow2.parse(_make(tmp_path / "a.qcow2", "-F", "raw", "-b", str(base)))
    assert header.backing and not header.data_file


def test_external_data_file(tmp_path: Path) -> None:
    header = qcow2.parse(_make(tmp_path / "a.qcow2", "-o",
                               f"data_file={tmp_path / 'data.raw'}"))
    assert header.data_file and not header.backing


def test_data_file_extension_alone_counts(tmp_path: Path) -> None:
    """The data-file name extension without the incompatible bit is refused too."""
    head = bytearray(_make(tmp_path / "a.qcow2", "-o", f"data_file={tmp_path / 'd.raw'}"))
    head[72:80] = bytes(8)
    assert qcow2.parse(bytes(head)).data_file


def test_encrypted(tmp_path: Path) -> None:
    header = qcow2.parse(_make(tmp_path / "a.qcow2", "--object",
                               "secret,id=s0,data=password", "-o",
                               "encrypt.format=luks,encrypt.key-secret=s0"))
    assert header.encrypted


@pytest.mark.parametrize("data", [b"", b"QFI", b"\x00" * 512, b"QFI\xfb" + b"\x00" * 100,
                                  b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 12 + b"\x00\x00\x00\x10"])
def test_not_qcow2(data: bytes) -> None:
    with pytest.raises(qcow2.HeaderError):
        qcow2.parse(data)


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
@pytest.mark.parametrize("name", ["base.qcow2", "../dir/base.qcow2", "/abs/base.raw"])
def test_backing_name_and_format_read_as_qemu_img_reads_them(tmp_path: Path, compat: str,
                                                              name: str) -> None:
    import json

    fmt = "raw" if name.endswith(".raw") else "qcow2"
    image = tmp_path / "a.qcow2"
    header = qcow2.parse(_make(image, "-o", f"compat={compat}", "-u", "-F", fmt, "-b", name))
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "qcow2", str(image)],
        check=True, capture_output=True, text=True).stdout)
    assert (header.backing_name, header.backing_format) == (
        info["backing-filename"], info["backing-filename-format"]) == (name, fmt)


def test_a_backing_format_qemu_would_not_read_is_none(tmp_path: Path) -> None:
    head = bytearray(_make(tmp_path / "a.qcow2", "-u", "-F", "qcow2", "-b", "base.qcow2"))
    at = head.index(bytes.fromhex("e2792aca"))
    head[at:at + 4] = bytes(4)  # the extension list ends before the format
    header = qcow2.parse(bytes(head))
    assert header.backing_name == "base.qcow2" and header.backing_format is None

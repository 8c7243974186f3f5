"""Pure parsing and error translation of kvmops.images.qemuimg (no qemu-img run)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvmops.errors import (
    NotFoundError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.images.qemuimg import (
    ImageInfo,
    ProgressParser,
    parse_check,
    parse_info,
    parse_progress,
    qemu_message,
    resolve_size,
    translate_error,
)
from kvmops.images.usage import disk_files

G = 1024**3
M = 1024**2

# --------------------------------------------------------------------------
# progress


def test_parse_progress_line() -> None:
    assert parse_progress("    (12.34/100%)") == 12.34
    assert parse_progress("    (0.00/100%)") == 0.0
    assert parse_progress("    (100.00/100%)") == 100.0
    assert parse_progress("") is None
    assert parse_progress("Formatting 'x', fmt=qcow2") is None


def test_progress_parser_handles_carriage_returns_and_split_chunks() -> None:
    parser = ProgressParser()
    values: list[float] = []
    stream = b"    (0.00/100%)\r    (12.5/1" + b"00%)\r    (50.01/100%)\r    (100.00/100%)\r\n"
    # feed in awkward pieces: one byte at a time
    for i in range(len(stream)):
        values += parser.feed(stream[i : i + 1])
    values += parser.flush()
    assert values == [0.0, 12.5, 50.01, 100.0]


def test_progress_parser_keeps_partial_line_until_terminated() -> None:
    parser = ProgressParser()
    assert parser.feed("    (33.00/1") == []
    assert parser.feed("00%)") == []
    assert parser.feed("\r") == [33.0]
    assert parser.feed("    (66.00/100%)") == []
    assert parser.flush() == [66.0]
    assert parser.flush() == []


def test_progress_parser_mixed_newlines_and_noise() -> None:
    parser = ProgressParser()
    assert parser.feed("noise\n    (1.00/100%)\n\n    (2.00/100%)\r") == [1.0, 2.0]


# --------------------------------------------------------------------------
# info / check JSON

_INFO = {
    "virtual-size": 67108864,
    "filename": "/img/ov.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "backing-filename": "base.qcow2",
    "full-backing-filename": "/img/base.qcow2",
    "backing-filename-format": "qcow2",
    "format-specific": {
        "type": "qcow2",
        "data": {"compat": "1.1", "corrupt": False, "lazy-refcounts": False},
    },
    "snapshots": [
        {
            "icount": 0,
            "vm-clock-nsec": 500000000,
            "name": "before-upgrade",
            "date-sec": 1700000000,
            "date-nsec": 250000000,
            "vm-clock-sec": 2,
            "id": "1",
            "vm-state-size": 4096,
        }
    ],
    "dirty-flag": False,
}


def test_info_json_into_model() -> None:
    image = parse_info(json.dumps(_INFO), path=Path("/img/ov.qcow2"))
    assert image.filename == "/img/ov.qcow2"
    assert image.format == "qcow2"
    assert image.virtual_size == 64 * M
    assert image.actual_size == 200704
    assert image.cluster_size == 65536
    assert image.backing_filename == "base.qcow2"
    assert image.full_backing_filename == "/img/base.qcow2"
    assert image.backing_format == "qcow2"
    assert image.corrupt is False
    assert image.compat == "1.1"
    assert image.dirty is False
    assert image.backing_chain == []
    (snap,) = image.snapshots
    assert snap.name == "before-upgrade"
    assert snap.id == "1"
    assert snap.vm_state_size == 4096
    assert snap.vm_clock_seconds == pytest.approx(2.5)
    assert snap.date == datetime.fromtimestamp(1700000000.25, tz=UTC)


def test_info_backing_chain_list() -> None:
    base = {"virtual-size": 1 * G, "filename": "/img/base.qcow2", "format": "raw"}
    image = parse_info(json.dumps([_INFO, base]), path=Path("/img/ov.qcow2"))
    assert image.filename == "/img/ov.qcow2"
    assert [b.filename for b in image.backing_chain] == ["/img/base.qcow2"]
    assert image.backing_chain[0].format == "raw"
    assert image.backing_chain[0].snapshots == []


def test_info_model_round_trips_as_json() -> None:
    image = parse_info(json.dumps(_INFO), path=Path("/img/ov.qcow2"))
    dumped = image.model_dump(mode="json")
    assert dumped["virtual_size"] == 64 * M
    assert ImageInfo.model_validate(dumped) == image


def test_info_without_json_is_storage_error() -> None:
    with pytest.raises(StorageError, match="/img/x"):
        parse_info("not json", path=Path("/img/x"))


def test_check_clean_leaks_corrupt() -> None:
    clean = {"image-end-offset": 262144, "total-clusters": 1024, "check-errors": 0,
             "allocated-clusters": 3, "filename": "/i.qcow2", "format": "qcow2"}
    result = parse_check(json.dumps(clean), 0, path=Path("/i.qcow2"))
    assert result.status == "clean" and result.ok and result.error() is None
    assert result.allocated_clusters == 3

    leaky = {**clean, "leaks": 4}
    result = parse_check(json.dumps(leaky), 3, path=Path("/i.qcow2"))
    assert result.status == "leaks" and result.ok and result.leaks == 4
    assert result.error() is None

    corrupt = {**clean, "corruptions": 2, "leaks": 1}
    result = parse_check(json.dumps(corrupt), 2, path=Path("/i.qcow2"))
    assert result.status == "corrupt" and not result.ok
    err = result.error()
    assert isinstance(err, StorageError)
    assert "/i.qcow2 is corrupt" in str(err) and "\n" not in str(err)


def test_check_exit_code_alone_marks_corruption() -> None:
    result = parse_check("", 2, path=Path("/i.qcow2"), fmt="qcow2")
    assert result.status == "corrupt"
    assert result.filename == "/i.qcow2" and result.format == "qcow2"


# --------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize(
    ("spec", "current", "expected"),
    [
        ("+1G", 1 * G, 2 * G),
        ("-512M", 1 * G, 512 * M),
        ("-1G", 1 * G, 0),
        ("20G", 1 * G, 20 * G),
        ("512M", 1 * G, 512 * M),
        (" +64K ", 0, 64 * 1024),
        (4096, 1 * G, 4096),
    ],
)
def test_resolve_size(spec: str | int, current: int, expected: int) -> None:
    assert resolve_size(spec, current) == expected


@pytest.mark.parametrize("spec", ["12XB", "+12XB", "-", "+", "1G2", ""])
def test_resolve_size_rejects_garbage(spec: str) -> None:
    with pytest.raises(ValidationError, match="invalid size"):
        resolve_size(spec, 1 * G)


def test_resolve_size_below_zero() -> None:
    with pytest.raises(ValidationError, match=r"only 1\.0 GiB"):
        resolve_size("-2G", 1 * G)


# --------------------------------------------------------------------------
# error translation

_LOCK = (
    "qemu-img: Could not open '/img/a.qcow2': Failed to get \"write\" lock\n"
    "Is another process using the image [/img/a.qcow2]?\n"
)


def _nobody(_path: Path) -> list[str]:
    return []


def test_qemu_message_strips_prefix_warnings_and_repeats() -> None:
    stderr = (
        "WARNING: Image format was not specified for 'r.img' and probing guessed raw.\n"
        "         Automatically detecting the format is dangerous for raw images.\n"
        "qemu-img: Could not open 'x': Could not open 'x': No such file or directory\n"
    )
    assert qemu_message(stderr) == "Could not open 'x': No such file or directory"


def test_lock_error_names_the_vm() -> None:
    seen: list[Path] = []

    def users(path: Path) -> list[str]:
        seen.append(path)
        return ["web1"]

    err = translate_error(_LOCK, what="apply snapshot 's1' to /img/a.qcow2",
                          path=Path("/img/a.qcow2"), users=users)
    assert isinstance(err, StateError)
    assert seen == [Path("/img/a.qcow2")]
    assert str(err) == (
        "cannot apply snapshot 's1' to /img/a.qcow2: the image is in use by running VM 'web1'; "
        "shut down 'web1' first"
    )
    assert err.exit_code == 5


def test_lock_error_without_known_vm() -> None:
    stderr = _LOCK.replace('"write" lock', 'shared "write" lock')
    err = translate_error(stderr, what="resize /img/a.qcow2", path=Path("/img/a.qcow2"),
                          users=_nobody)
    assert isinstance(err, StateError)
    assert "in use by another process" in str(err)
    assert "\n" not in str(err)


def test_lock_error_on_other_file_names_that_file() -> None:
    stderr = _LOCK.replace("/img/a.qcow2", "/img/base.qcow2")
    err = translate_error(stderr, what="commit /img/ov.qcow2", path=Path("/img/ov.qcow2"),
                          users=_nobody)
    assert isinstance(err, StateError)
    assert "/img/base.qcow2 is in use" in str(err)


@pytest.mark.parametrize(
    ("stderr", "cls", "fragment"),
    [
        ("qemu-img: Could not open 'x': No such file or directory\n", NotFoundError,
         "No such file or directory"),
        ("qemu-img: x: Unknown file format 'foo'\n", ValidationError, "Unknown file format 'foo'"),
        ("qemu-img: Could not create snapshot 'x': -95 (Operation not supported)\n",
         UnsupportedError, "Operation not supported"),
        ("qemu-img: Image does not have a backing file\n", StorageError,
         "Image does not have a backing file"),
        ("", StorageError, "exited with status 1"),
    ],
)
def test_translate_error_classes(stderr: str, cls: type[Exception], fragment: str) -> None:
    err = translate_error(stderr, what="do it to /x", path=Path("/x"), returncode=1,
                          users=_nobody)
    assert type(err) is cls
    assert str(err).startswith("cannot do it to /x: ")
    assert fragment in str(err)
    assert "qemu-img:" not in str(err) and "\n" not in str(err)


# --------------------------------------------------------------------------
# libvirt domain XML


def test_disk_files_include_backing_chain() -> None:
    xml = """<domain><devices>
      <disk type='file' device='disk'><source file='/img/ov.qcow2'/>
        <backingStore type='file'><source file='/img/base.qcow2'/><backingStore/></backingStore>
      </disk>
      <disk type='network' device='disk'><source protocol='nbd' name='x'/></disk>
      <disk type='file' device='cdrom'><target dev='sda'/></disk>
    </devices></domain>"""
    assert disk_files(xml) == ["/img/ov.qcow2", "/img/base.qcow2"]

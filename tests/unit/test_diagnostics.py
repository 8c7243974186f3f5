"""The pure parts of the hung-guest diagnostics: screenshots to PNG, dump requests
checked before any VM is touched, the dump job's progress from libvirt's job stats,
and the atomic publication of a written file."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest
from PIL import Image

from kvmops.errors import (
    AlreadyExistsError,
    CancelledError,
    HypervisorError,
    PathRefusedError,
    StorageError,
    ValidationError,
)
from kvmops.host import diagnostics as host_diag
from kvmops.host.domain import Domain
from kvmops.services import diagnostics
from kvmops.services.caller import Caller

API = Caller(name="api-user", role="operator", via="api")


def _image(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format=fmt)
    return out.getvalue()


def test_a_ppm_screen_becomes_a_png_of_the_same_size() -> None:
    png, width, height = diagnostics.to_png("image/x-portable-pixmap", _image("PPM"))
    assert (width, height) == (64, 48)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (64, 48)
        assert image.getpixel((3, 3)) == (10, 200, 30)


def test_a_png_screen_is_kept_as_it_is() -> None:
    data = _image("PNG", (720, 400))
    assert diagnostics.to_png("image/png", data) == (data, 720, 400)


def test_a_screen_that_is_no_image_is_one_error() -> None:
    with pytest.raises(StorageError, match="not an image"):
        diagnostics.to_png("image/png", b"\x89PNG but not really")


def test_dump_requests_are_checked_before_any_vm(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown dump format"):
        diagnostics.check_dump(API, tmp_path / "x.core", fmt="zip")
    with pytest.raises(ValidationError, match="needs a memory-only dump"):
        diagnostics.check_dump(API, tmp_path / "x.core", fmt="kdump-zlib")
    with pytest.raises(PathRefusedError, match="outside the allowed image directories"):
        diagnostics.check_dump(API, Path("/etc/x.core"), memory_only=True)
    with pytest.raises(ValidationError, match="absolute"):
        diagnostics.check_dump(API, Path("x.core"))


def test_an_existing_file_is_refused_unless_forced(tmp_path: Path) -> None:
    trusted = Caller(name="root", role="admin", via="cli", trusted_paths=True)
    existing = tmp_path / "old.core"
    existing.write_bytes(b"old")
    with pytest.raises(AlreadyExistsError, match="--force"):
        diagnostics.check_dump(trusted, existing)
    assert diagnostics.check_dump(trusted, existing, force=True) == existing.resolve()
    with pytest.raises(ValidationError, match="is a directory"):
        diagnostics.check_dump(trusted, tmp_path, force=True)


def test_publish_refuses_a_name_taken_meanwhile_and_replaces_with_force(tmp_path: Path
                                                                          ) -> None:
    target = tmp_path / "dump.core"
    tmp = tmp_path / ".dump.core.1.part"
    tmp.write_bytes(b"new")
    target.write_bytes(b"someone else's")
    with pytest.raises(AlreadyExistsError):
        diagnostics._publish(tmp, target, force=False, what="dump file")
    assert target.read_bytes() == b"someone else's" and tmp.exists()
    diagnostics._publish(tmp, target, force=True, what="dump file")
    assert target.read_bytes() == b"new" and not tmp.exists()
    tmp.write_bytes(b"again")
    fresh = tmp_path / "fresh.core"
    diagnostics._publish(tmp, fresh, force=False, what="dump file")
    assert fresh.read_bytes() == b"again" and not tmp.exists()


class _Raw:
    def __init__(self, stats: dict[str, Any] | Exception) -> None:
        self.stats = stats

    def jobStats(self, flags: int) -> dict[str, Any]:
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats


@pytest.mark.parametrize(("stats", "expected"), [
    ({"type": libvirt.VIR_DOMAIN_JOB_BOUNDED, "memory_total": 100, "memory_processed": 40},
     host_diag.DumpProgress(40, 100)),
    ({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_total": 50, "data_processed": 5},
     host_diag.DumpProgress(5, 50)),
    ({"type": libvirt.VIR_DOMAIN_JOB_BOUNDED}, host_diag.DumpProgress(0, 0)),
    ({"type": libvirt.VIR_DOMAIN_JOB_NONE}, None),
    ({}, None),
])
def test_dump_progress_from_the_job_stats(stats: dict[str, Any],
                                          expected: host_diag.DumpProgress | None) -> None:
    assert host_diag.job_progress(_Raw(stats)) == expected


def test_dump_progress_when_libvirt_has_no_job_stats() -> None:
    assert host_diag.job_progress(_Raw(libvirt.libvirtError("no job"))) is None


def test_default_dump_name_says_what_it_holds() -> None:
    assert diagnostics.default_dump_path("web1").name.startswith("web1-")
    assert diagnostics.default_dump_path("web1").suffix == ".core"
    assert diagnostics.default_dump_path("web1", "kdump-zlib").suffix == ".kdump"
    assert diagnostics.default_dump_path("web1", "win-dmp").suffix == ".dmp"


class _DumpingDomain:
    """A virDomain whose core dump runs until it ends by itself (``finish_after`` s) or
    is aborted; ``abortable`` False answers abortJob as libvirt does for a memory-only
    dump."""

    def __init__(self, *, abortable: bool, finish_after: float = 10.0) -> None:
        self.abortable = abortable
        self.finish_after = finish_after
        self.aborted = threading.Event()
        self.abort_calls = 0

    def name(self) -> str:
        return "fake"

    def coreDumpWithFormat(self, path: str, fmt: int, flags: int) -> int:
        if self.aborted.wait(self.finish_after):
            raise libvirt.libvirtError("operation aborted: job 'domain core dump' canceled")
        return 0

    def jobStats(self, flags: int) -> dict[str, Any]:
        return {"type": libvirt.VIR_DOMAIN_JOB_BOUNDED, "memory_total": 100,
                "memory_processed": 10}

    def abortJob(self) -> int:
        self.abort_calls += 1
        if not self.abortable:
            raise libvirt.libvirtError("cannot abort memory-only dump")
        self.aborted.set()
        return 0


def test_a_cancelled_dump_aborts_libvirts_job() -> None:
    raw = _DumpingDomain(abortable=True)
    seen: list[host_diag.DumpProgress] = []
    with pytest.raises(CancelledError, match="cancelled"):
        host_diag.core_dump(Domain(raw), "/nonexistent/x", progress=seen.append,
                            cancelled=lambda: bool(seen))
    assert raw.aborted.is_set() and raw.abort_calls == 1
    assert seen[0] == host_diag.DumpProgress(10, 100)


def test_a_dump_libvirt_cannot_abort_ends_and_still_counts_as_cancelled() -> None:
    raw = _DumpingDomain(abortable=False, finish_after=1.0)
    with pytest.raises(CancelledError):  # the service then removes the finished file
        host_diag.core_dump(Domain(raw), "/nonexistent/x", memory_only=True,
                            cancelled=lambda: True)
    assert raw.abort_calls == 1 and not raw.aborted.is_set()


def test_a_progress_callback_raising_cancel_aborts_too() -> None:
    raw = _DumpingDomain(abortable=True)

    def progress(update: host_diag.DumpProgress) -> None:
        raise CancelledError("job cancelled")

    with pytest.raises(CancelledError):
        host_diag.core_dump(Domain(raw), "/nonexistent/x", progress=progress)
    assert raw.aborted.is_set()


def test_libvirts_format_refusals_say_what_to_use_instead() -> None:
    lzo = diagnostics._with_hint(ValidationError(
        "dumping VM 'x': invalid argument: unsupported dumpformat 'kdump-lzo' for this QEMU "
        "binary"), "kdump-lzo")
    assert isinstance(lzo, ValidationError) and "built without kdump-lzo" in str(lzo)
    win = diagnostics._with_hint(HypervisorError(
        "dumping VM 'x': operation failed: win-dump: invalid vmcoreinfo note size"), "win-dmp")
    assert "vmcoreinfo device" in str(win)
    other = HypervisorError("dumping VM 'x': something else")
    assert diagnostics._with_hint(other, "elf") is other

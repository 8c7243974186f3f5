"""`kvmops image` end to end: the real CLI against real qemu-img, in a directory inside
the test image directory (an allowed directory: chains may only lead there)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.errors import (
    AlreadyExistsError,
    NotFoundError,
    PathRefusedError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from tests.conftest import SESSION_PREFIX, TEST_IMAGES

pytestmark = pytest.mark.integration

M = 1024**2
G = 1024**3
_VENV_KVMOPS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvmops"


def _kvmops_cmd() -> list[str]:
    if _VENV_KVMOPS.exists():
        return [str(_VENV_KVMOPS)]
    return [sys.executable, "-m", "kvmops.cli.main"]


def kvmops(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("KVMOPS_DEBUG", None)
    return subprocess.run(
        [*_kvmops_cmd(), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False,
    )


def ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = kvmops(*args)
    assert proc.returncode == 0, f"kvmops {args} failed ({proc.returncode}): {proc.stderr}"
    return proc


def assert_refused(proc: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    """One ``kvmops: error:`` line on stderr, no traceback, the class's exit code."""
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kvmops: error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def qemu_io(image: Path, command: str, fmt: str = "qcow2") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(image)],
        capture_output=True, text=True, check=False, timeout=60,
    )


def pattern_is(image: Path, pattern: str, length: str = "1M") -> bool:
    proc = qemu_io(image, f"read -P {pattern} 0 {length}")
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout


def image_info(image: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(ok("image", "info", image, "--json").stdout)
    return data


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Each test's own directory inside the allowed image directory (not /tmp)."""
    TEST_IMAGES.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX + "img-", dir=TEST_IMAGES))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    image = tmp_path / "disk.qcow2"
    ok("image", "create", image, "--size", "64M")
    return image


# --------------------------------------------------------------------------


def test_create_and_info_json(tmp_path: Path) -> None:
    image = tmp_path / "new.qcow2"
    proc = ok("image", "create", image, "--size", "1G")
    assert str(image) in proc.stdout
    info = image_info(image)
    assert info["virtual_size"] == 1 * G
    assert info["format"] == "qcow2"
    assert info["filename"] == str(image)
    assert info["snapshots"] == []

    raw = tmp_path / "new.raw"
    ok("image", "create", raw, "--size", "8M", "--format", "raw")
    info = image_info(raw)
    assert (info["format"], info["virtual_size"]) == ("raw", 8 * M)

    human = ok("image", "info", image).stdout
    assert "qcow2" in human and "1.0 GiB" in human


def test_create_overlay_and_backing_chain(tmp_path: Path, qcow2: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    ok("image", "create", overlay, "--backing", qcow2)
    chain = json.loads(ok("image", "info", overlay, "--json", "--backing-chain").stdout)
    assert chain["virtual_size"] == 64 * M
    assert chain["full_backing_filename"] == str(qcow2)
    assert [b["filename"] for b in chain["backing_chain"]] == [str(qcow2)]


def test_create_refuses_existing_file(qcow2: Path) -> None:
    proc = kvmops("image", "create", qcow2, "--size", "1G")
    assert_refused(proc, AlreadyExistsError.exit_code, str(qcow2), "already exists")


def test_check_json(qcow2: Path) -> None:
    result = json.loads(ok("image", "check", qcow2, "--json").stdout)
    assert result["status"] == "clean"
    assert result["corruptions"] == 0 and result["leaks"] == 0
    assert result["format"] == "qcow2"
    assert result["filename"] == str(qcow2)


def test_check_corrupt_image_exits_non_zero(qcow2: Path) -> None:
    assert qemu_io(qcow2, "write 0 1M").returncode == 0
    # Zero the first refcount block: the allocated clusters lose their references.
    with qcow2.open("r+b") as f:
        header = f.read(104)
        table = struct.unpack(">Q", header[48:56])[0]
        f.seek(table)
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block)
        f.write(b"\0" * 64)
    proc = kvmops("image", "check", qcow2, "--json")
    assert_refused(proc, StorageError.exit_code, str(qcow2), "is corrupt")
    result = json.loads(proc.stdout)  # the report is still printed
    assert result["status"] == "corrupt" and result["corruptions"] > 0


def test_check_raw_cannot_be_checked(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    ok("image", "create", raw, "--size", "1M", "--format", "raw")
    proc = kvmops("image", "check", raw)
    assert_refused(proc, UnsupportedError.exit_code, str(raw), "raw")


def test_convert_with_progress_then_compare(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    ok("image", "create", src, "--size", "256M", "--format", "raw")
    assert qemu_io(src, "write -P 0x5a 0 64M", fmt="raw").returncode == 0
    assert qemu_io(src, "write -P 0x33 128M 32M", fmt="raw").returncode == 0

    dst = tmp_path / "out" / "dst.qcow2"
    dst.parent.mkdir()
    proc = ok("image", "convert", src, dst, "-O", "qcow2")
    assert "100%" in proc.stderr  # the Rich progress bar
    assert image_info(dst)["format"] == "qcow2"
    compare = subprocess.run(["qemu-img", "compare", str(src), str(dst)],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert [p.name for p in dst.parent.iterdir()] == ["dst.qcow2"]  # no temp file left

    # compressed, and the refusal to overwrite without --overwrite
    proc = kvmops("image", "convert", src, dst, "-O", "qcow2")
    assert_refused(proc, AlreadyExistsError.exit_code, str(dst), "--overwrite")
    ok("image", "convert", src, dst, "-O", "qcow2", "--compress", "--overwrite")
    compare = subprocess.run(["qemu-img", "compare", str(src), str(dst)],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_convert_progress_callback_sees_percentages(tmp_path: Path) -> None:
    from kvmops.images import qemuimg

    src = tmp_path / "src.raw"
    qemuimg.create(src, "128M", "raw")
    assert qemu_io(src, "write -P 0x11 0 96M", fmt="raw").returncode == 0
    seen: list[float] = []
    out = qemuimg.convert(src, "raw", tmp_path / "dst.qcow2", "qcow2", progress=seen.append)
    assert out.format == "qcow2"
    assert seen and seen[-1] == 100.0
    assert seen == sorted(seen)


def test_failed_convert_leaves_nothing_at_dst(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    ok("image", "create", src, "--size", "1M", "--format", "raw")
    dst = tmp_path / "dst.img"
    proc = kvmops("image", "convert", src, dst, "-O", "nosuchformat")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.raw"]


def test_resize_grow_relative_and_absolute(qcow2: Path) -> None:
    ok("image", "resize", qcow2, "+1G")
    assert image_info(qcow2)["virtual_size"] == 64 * M + 1 * G
    ok("image", "resize", qcow2, "2G")
    assert image_info(qcow2)["virtual_size"] == 2 * G


def test_resize_shrink_needs_flag(qcow2: Path) -> None:
    proc = kvmops("image", "resize", qcow2, "-32M")
    line = assert_refused(proc, ValidationError.exit_code, "shrink", str(qcow2),
                          "64.0 MiB", "32.0 MiB", "--shrink")
    assert line.startswith("kvmops: error: refusing to shrink")
    assert image_info(qcow2)["virtual_size"] == 64 * M

    ok("image", "resize", qcow2, "-32M", "--shrink")
    assert image_info(qcow2)["virtual_size"] == 32 * M


def test_bad_size_refused(tmp_path: Path, qcow2: Path) -> None:
    image = tmp_path / "bad.qcow2"
    proc = kvmops("image", "create", image, "--size", "12XB")
    assert_refused(proc, ValidationError.exit_code, "invalid image size '12XB'")
    assert not image.exists()

    proc = kvmops("image", "resize", qcow2, "12XB")
    assert_refused(proc, ValidationError.exit_code, "invalid size '12XB'")


@pytest.mark.parametrize(
    "args",
    [
        ("info",),
        ("check",),
        ("resize", "+1G"),
        ("commit",),
        ("snapshot", "list"),
        ("snapshot", "create", "s1"),
    ],
)
def test_missing_file_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "nope.qcow2"
    cmd, *rest = args
    argv: list[str | Path] = (
        [cmd, missing, *rest] if cmd != "snapshot" else [cmd, rest[0], missing, *rest[1:]]
    )
    proc = kvmops("image", *argv)
    assert_refused(proc, NotFoundError.exit_code, str(missing), "does not exist")


def test_missing_convert_source_refused(tmp_path: Path) -> None:
    proc = kvmops("image", "convert", tmp_path / "nope.raw", tmp_path / "x.qcow2")
    assert_refused(proc, NotFoundError.exit_code, str(tmp_path / "nope.raw"), "does not exist")
    assert not (tmp_path / "x.qcow2").exists()


def test_rebase_and_commit(tmp_path: Path, qcow2: Path) -> None:
    assert qemu_io(qcow2, "write -P 0x01 0 1M").returncode == 0
    overlay = tmp_path / "overlay.qcow2"
    ok("image", "create", overlay, "--backing", qcow2)
    assert qemu_io(overlay, "write -P 0x02 0 1M").returncode == 0

    ok("image", "commit", overlay)
    assert pattern_is(qcow2, "0x02")

    other = tmp_path / "other.qcow2"
    ok("image", "create", other, "--size", "64M")
    ok("image", "rebase", overlay, other)
    assert image_info(overlay)["full_backing_filename"] == str(other)
    assert pattern_is(overlay, "0x02")  # safe rebase kept the visible data

    proc = kvmops("image", "rebase", overlay, tmp_path / "gone.qcow2")
    assert_refused(proc, NotFoundError.exit_code, "gone.qcow2", "--unsafe")

    proc = kvmops("image", "commit", other)
    assert_refused(proc, StateError.exit_code, str(other), "no backing file")


def test_snapshot_round_trip(qcow2: Path) -> None:
    assert qemu_io(qcow2, "write -P 0xaa 0 1M").returncode == 0
    proc = ok("image", "snapshot", "create", qcow2, "clean")
    assert "clean" in proc.stdout

    listed = json.loads(ok("image", "snapshot", "list", qcow2, "--json").stdout)
    assert [s["name"] for s in listed] == ["clean"]
    assert "clean" in ok("image", "snapshot", "list", qcow2).stdout

    proc = kvmops("image", "snapshot", "create", qcow2, "clean")
    assert_refused(proc, AlreadyExistsError.exit_code, "'clean'", str(qcow2), "already exists")

    assert qemu_io(qcow2, "write -P 0xbb 0 1M").returncode == 0
    assert pattern_is(qcow2, "0xbb")

    ok("image", "snapshot", "apply", qcow2, "clean")
    assert pattern_is(qcow2, "0xaa")

    proc = kvmops("image", "snapshot", "apply", qcow2, "missing")
    assert_refused(proc, NotFoundError.exit_code, "'missing'", str(qcow2), "clean")
    proc = kvmops("image", "snapshot", "delete", qcow2, "missing")
    assert_refused(proc, NotFoundError.exit_code, "'missing'", str(qcow2))

    ok("image", "snapshot", "delete", qcow2, "clean")
    assert json.loads(ok("image", "snapshot", "list", qcow2, "--json").stdout) == []
    assert pattern_is(qcow2, "0xaa")


def test_snapshot_on_raw_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    ok("image", "create", raw, "--size", "8M", "--format", "raw")
    for args in (("create", raw, "s1"), ("list", raw), ("apply", raw, "s1")):
        proc = kvmops("image", "snapshot", *args)
        assert_refused(proc, UnsupportedError.exit_code, str(raw),
                       "raw images have no internal snapshots; convert to qcow2 first")


# --------------------------------------------------------------------------
# images held by a running QEMU


@pytest.fixture
def running_qemu(qcow2: Path) -> Iterator[Path]:
    """A paused QEMU (no libvirt) holding ``qcow2`` open read-write."""
    assert shutil.which("qemu-system-x86_64"), "QEMU is part of the test host (setup-host.sh)"
    ok("image", "snapshot", "create", qcow2, "s1")
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none",
         "-S", "-drive", f"file={qcow2},if=virtio,format=qcow2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait until QEMU has the image locked (qemu-img without -U then fails).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {proc.stderr.read() if proc.stderr else ''}")
            probe = subprocess.run(["qemu-img", "info", str(qcow2)],
                                   capture_output=True, text=True, check=False)
            if "lock" in probe.stderr:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("QEMU did not lock the image in time")
        yield qcow2
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_in_use_image_refused(running_qemu: Path) -> None:
    image = running_qemu
    proc = kvmops("image", "snapshot", "apply", image, "s1")
    line = assert_refused(proc, StateError.exit_code, "apply snapshot 's1'", str(image), "in use")
    assert "lock" in line or "VM" in line

    for args in (("snapshot", "create", image, "s2"), ("snapshot", "delete", image, "s1"),
                 ("resize", image, "+1M")):
        assert_refused(kvmops("image", *args), StateError.exit_code, str(image), "in use")

    # read-only look-ups still work while the VM runs (force-share)
    assert image_info(image)["virtual_size"] == 64 * M
    listed = json.loads(ok("image", "snapshot", "list", image, "--json").stdout)
    assert [s["name"] for s in listed] == ["s1"]


def _virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args],
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """libvirt's QEMU runs as its own user and cannot enter pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="kvmops-image-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_in_use_by_libvirt_vm_names_it(world_readable_dir: Path) -> None:
    assert shutil.which("virsh"), "virsh is part of the test host (setup-host.sh)"
    qcow2 = world_readable_dir / "disk.qcow2"
    ok("image", "create", qcow2, "--size", "16M")
    name = f"kvmops-test-image-{os.getpid()}"
    xml = world_readable_dir / "domain.xml"
    xml.write_text(f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{qcow2}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
""")
    started = _virsh("create", str(xml), "--paused")
    assert started.returncode == 0, f"cannot start a libvirt domain: {started.stderr.strip()}"
    try:
        proc = kvmops("image", "snapshot", "create", qcow2, "s1")
        assert_refused(proc, StateError.exit_code, str(qcow2), f"in use by running VM '{name}'")
    finally:
        _virsh("destroy", name)


# -------------------------------------------------------------------------- hostile images
@pytest.mark.parametrize("kind", ["qcow2-backing", "qcow2-data-file", "luks", "vmdk"])
def test_guest_written_header_is_raw_data(tmp_path: Path, kind: str) -> None:
    """A raw disk whose guest wrote an image header naming a root-only host file: info,
    check and convert read it as raw data; the host file is never opened or changed."""
    from tests.hostile import host_secret, hostile_raw, state_of

    secret = host_secret(kind)
    try:
        before = state_of(secret)
        disk = hostile_raw(tmp_path / "guest.raw", kind, secret)
        info = image_info(disk)
        assert info["format"] == "raw" and info["format_source"] == "default"
        assert info["virtual_size"] == 16 * M and info["backing_filename"] is None
        if kind != "qcow2-data-file":  # the data-file header starts with the same magic
            assert any(kind.split("-")[0] in note for note in info["notes"])  # type: ignore
        out = tmp_path / "copy.qcow2"
        ok("image", "convert", disk, out, "-O", "qcow2")
        copy = tmp_path / "copy.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out),
                        str(copy)], check=True)
        assert copy.read_bytes() == disk.read_bytes()  # the guest's bytes, not the secret
        assert secret.read_bytes() not in copy.read_bytes()
        assert state_of(secret) == before
    finally:
        secret.unlink()


def test_naming_a_hostile_header_as_qcow2_is_refused(tmp_path: Path) -> None:
    from tests.hostile import host_secret, hostile_raw, state_of

    secret = host_secret("qcow2")
    try:
        before = state_of(secret)
        for kind in ("qcow2-backing", "qcow2-data-file"):
            disk = hostile_raw(tmp_path / f"{kind}.raw", kind, secret)
            for args in (("image", "info", disk, "--format", "qcow2"),
                         ("image", "convert", disk, tmp_path / "out.qcow2", "-f", "qcow2"),
                         ("image", "check", disk, "-f", "qcow2")):
                proc = kvmops(*args)
                assert_refused(proc, PathRefusedError.exit_code, str(secret),
                               "outside the allowed directories")
            assert not (tmp_path / "out.qcow2").exists()
        assert state_of(secret) == before
        proc = kvmops("image", "info", tmp_path / "qcow2-backing.raw", "--format", "vmdk")
        assert_refused(proc, UnsupportedError.exit_code, "vmdk", "raw and qcow2 images only")
    finally:
        secret.unlink()


def test_state_directory_is_never_named(tmp_path: Path) -> None:
    proc = kvmops("image", "info", "/var/lib/kvmops/state/kvmops.db")
    assert_refused(proc, PathRefusedError.exit_code, "state directory")
    proc = kvmops("image", "convert", "/var/lib/kvmops/state/kvmops.db", tmp_path / "x.raw",
                  "-O", "raw")
    assert_refused(proc, PathRefusedError.exit_code, "state directory")

"""The tiny guest's tools disk: layout, wrappers, size, the image itself, /init's part."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from kvmops.devguest import build, guest_paths, tools

LIBS = ["/lib/x86_64-linux-gnu/libaio.so.1", "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2"]
FIO = tools.Tool("fio", "/usr/bin/fio", "fio")


def test_layout_puts_binaries_in_libexec_and_libraries_by_soname() -> None:
    assert tools.layout([FIO], LIBS) == {
        "libexec/fio": "/usr/bin/fio",
        "lib/libaio.so.1": "/lib/x86_64-linux-gnu/libaio.so.1",
        "lib/libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
        "lib/ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2",
    }


def test_layout_refuses_two_libraries_with_one_name() -> None:
    with pytest.raises(ValueError, match=r"two libraries named libc\.so\.6"):
        tools.layout([FIO], [*LIBS, "/usr/lib/other/libc.so.6"])


def test_loader_is_the_one_ld_linux() -> None:
    assert tools.loader_of(LIBS) == "ld-linux-x86-64.so.2"
    with pytest.raises(ValueError, match="one dynamic loader"):
        tools.loader_of(LIBS[:2])
    with pytest.raises(ValueError, match="one dynamic loader"):
        tools.loader_of([*LIBS, "/lib/ld-linux.so.2"])


def test_wrapper_runs_the_binary_under_the_disks_own_loader_and_libraries() -> None:
    script = tools.wrapper(FIO, "ld-linux-x86-64.so.2")
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().splitlines()[-1] == (
        'exec "$d/lib/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/libexec/fio" "$@"')
    assert "d=/opt/kvmops-tools\n" in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


def test_image_size_leaves_room_for_metadata() -> None:
    assert tools.image_size_mib(0) == 8
    assert tools.image_size_mib(1) == 9
    assert tools.image_size_mib(80 * 1024 * 1024) == 96
    assert tools.versions_text({"sysbench": "1.0", "fio": "3.33"}) == "fio 3.33\nsysbench 1.0\n"


def _fake_tree(tmp_path: Path) -> tuple[list[tools.Tool], list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fio").write_bytes(b"\x7fELF fio")
    (src / "libc.so.6.real").write_bytes(b"libc")
    (src / "libc.so.6").symlink_to("libc.so.6.real")  # ldd prints the soname link
    (src / "ld-linux-x86-64.so.2").write_bytes(b"loader")
    return ([tools.Tool("fio", str(src / "fio"), "fio")],
            [str(src / "libc.so.6"), str(src / "ld-linux-x86-64.so.2")])


def test_stage_writes_binaries_libraries_wrappers_and_versions(tmp_path: Path) -> None:
    fake_tools, libs = _fake_tree(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    size = tools.stage(root, fake_tools, libs, {"fio": "3.33-3"})
    assert size == len(b"\x7fELF fio") + len(b"libc") + len(b"loader")
    assert (root / "lib/libc.so.6").read_bytes() == b"libc"
    assert not (root / "lib/libc.so.6").is_symlink()
    assert (root / "libexec/fio").stat().st_mode & 0o777 == 0o755
    assert (root / "bin/fio").read_text() == tools.wrapper(fake_tools[0], "ld-linux-x86-64.so.2")
    assert (root / "bin/fio").stat().st_mode & 0o777 == 0o755
    assert (root / "VERSIONS").read_text() == "fio 3.33-3\n"


def test_build_tools_disk_makes_a_labelled_ext4_by_rename(tmp_path: Path) -> None:
    fake_tools, libs = _fake_tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    target = out / tools.TOOLS_NAME
    target.write_bytes(b"old image")
    old_inode = target.stat().st_ino
    work = tmp_path / "work"
    work.mkdir()
    runs: list[Sequence[str]] = []

    def run(argv: Sequence[str], what: str) -> str:
        runs.append(argv)
        return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout

    tools.build_tools_disk(target, work, libs, {"fio": "3.33-3"}, run,
                           str(shutil.which("mkfs.ext4")), tools=fake_tools)
    assert target.stat().st_ino != old_inode  # a new file renamed over the old one
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in out.iterdir()) == [tools.TOOLS_NAME]  # no temp left
    assert "^has_journal" in runs[0]  # only ever mounted read-only
    label = subprocess.run(["e2label", str(target)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == tools.TOOLS_LABEL
    listing = subprocess.run(["debugfs", "-R", "cat /bin/fio", str(target)],
                             capture_output=True, text=True, check=True).stdout
    assert "libexec/fio" in listing


def test_build_tools_disk_failure_keeps_the_old_image(tmp_path: Path) -> None:
    fake_tools, libs = _fake_tree(tmp_path)
    target = tmp_path / tools.TOOLS_NAME
    target.write_bytes(b"old image")
    work = tmp_path / "work"
    work.mkdir()

    def failing(argv: Sequence[str], what: str) -> str:
        raise build.GuestBuildError(what)

    with pytest.raises(build.GuestBuildError, match=r"mkfs\.ext4 of"):
        tools.build_tools_disk(target, work, libs, {}, failing, "mkfs.ext4", tools=fake_tools)
    assert target.read_bytes() == b"old image"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_guest_paths_name_the_tools_disk_next_to_the_kernel(tmp_path: Path) -> None:
    paths = guest_paths(tmp_path)
    assert paths.tools == tmp_path / "tools.ext4"
    assert paths.tools.parent == paths.kernel.parent
    assert guest_paths().tools.name == "tools.ext4"


def test_init_mounts_the_tools_disk_read_only_by_label_never_vda() -> None:
    text = build.render_init(build._templates()["init.sh"], ["ext4"])
    start = text.index("mount_tools() {")
    body = text[start:text.index("\n}\n", start)]
    assert '[ "$d" = vda ] && continue' in body
    assert '= "kvmopstools" ] || continue' in body
    assert 'mount -t ext4 -o ro "/dev/$d" /opt/kvmops-tools' in body
    assert 'ln -s "$t" "/usr/bin/${t##*/}"' in body
    # mounted before qemu-ga starts: guest-exec finds the tools from the first command
    assert text.index("\nmount_tools\n") < text.index("exec qemu-ga")
    assert "export PATH=/bin:/sbin:/usr/bin:/usr/sbin" in text

"""The tiny guest's tools disk: fio and sysbench on an ext4 image, not in the initramfs.

Every test guest boots the initramfs, and under TCG each megabyte of it costs boot
time; fio and sysbench with their libraries are ~80 MiB. So they live on
``tools.ext4`` (label ``kvmopstools``) next to ``vmlinuz``, a disk a VM gets only when
a test or an operator attaches it (read-only: VMs share the one file). The guest's
``/init`` mounts a disk with that label read-only on ``/opt/kvmops-tools`` and links
each of its ``bin/*`` into ``/usr/bin`` (on qemu-ga's PATH, so ``guest exec VM -- fio``
works).

Where the binaries come from: Debian's ``fio`` and ``sysbench`` packages installed on
the host (scripts/setup-host.sh; fio's server service is installed disabled), copied
with their ``ldd`` closure -- the way qemu-ga gets into the initramfs. Taking them from
the .debs (like dhcpcd) would need the .debs of every library too (ceph, gluster, rdma
for fio). sysbench's Lua is LuaJIT, a shared library in that closure; its built-in tests
(cpu, memory, fileio, threads, mutex) need no scripts (the oltp_* ones need a database,
and are left out).

Layout of the image (paths relative to its root, which the guest mounts at
``TOOLS_MOUNT``)::

    bin/fio, bin/sysbench            shell wrappers (what /usr/bin links to)
    libexec/fio, libexec/sysbench    the ELF binaries
    lib/*                            their libraries, by soname, and the dynamic loader
    VERSIONS                         package versions, one ``NAME VERSION`` a line

A wrapper runs its binary with the image's own loader and ``--library-path lib``: the
tools use the libc they were built against, whatever the initramfs has.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TOOLS_LABEL = "kvmopstools"
TOOLS_MOUNT = "/opt/kvmops-tools"
TOOLS_NAME = "tools.ext4"


@dataclass(frozen=True)
class Tool:
    name: str  # the command in the guest
    binary: str  # the host path copied
    package: str  # the Debian package it comes from


TOOLS: tuple[Tool, ...] = (
    Tool("fio", "/usr/bin/fio", "fio"),
    Tool("sysbench", "/usr/bin/sysbench", "sysbench"),
)

_SLACK_MIB = 8  # ext4 metadata (inode tables, bitmaps, directories) besides the files


def is_loader(path: str) -> bool:
    """The dynamic loader in ``ldd`` output (``/lib64/ld-linux-x86-64.so.2``)."""
    return os.path.basename(path).startswith("ld-linux")


def loader_of(libs: Sequence[str]) -> str:
    """The one dynamic loader among ``libs``; ValueError without one or with two."""
    names = {os.path.basename(p) for p in libs if is_loader(p)}
    if len(names) != 1:
        raise ValueError(f"expected one dynamic loader in the libraries, found {sorted(names)}")
    return names.pop()


def layout(tools: Sequence[Tool], libs: Sequence[str]) -> dict[str, str]:
    """Image path -> host path for the binaries and libraries (libraries by their soname,
    the name ``ldd`` printed; ValueError if two host libraries share one)."""
    files: dict[str, str] = {}
    for tool in tools:
        files[f"libexec/{tool.name}"] = tool.binary
    for lib in libs:
        rel = f"lib/{os.path.basename(lib)}"
        if rel in files and files[rel] != lib:
            raise ValueError(f"two libraries named {os.path.basename(lib)}: "
                             f"{files[rel]} and {lib}")
        files[rel] = lib
    return files


def wrapper(tool: Tool, loader: str, mount: str = TOOLS_MOUNT) -> str:
    """The ``bin/NAME`` script: the binary under the image's own loader and libraries."""
    return (
        "#!/bin/sh\n"
        f"# {tool.name} from the kvmops tools disk (label {TOOLS_LABEL}), run by the disk's\n"
        "# own dynamic loader with only its own libraries (not the guest's libc).\n"
        f"d={mount}\n"
        f'exec "$d/lib/{loader}" --library-path "$d/lib" "$d/libexec/{tool.name}" "$@"\n'
    )


def versions_text(versions: Mapping[str, str]) -> str:
    return "".join(f"{name} {version}\n" for name, version in sorted(versions.items()))


def image_size_mib(file_bytes: int) -> int:
    """ext4 size for ``file_bytes`` of content: the files plus a tenth, plus slack."""
    mib = 1024 * 1024
    return (file_bytes + file_bytes // 10 + mib - 1) // mib + _SLACK_MIB


def stage(root: Path, tools: Sequence[Tool], libs: Sequence[str],
          versions: Mapping[str, str]) -> int:
    """Write the image's content into ``root``; returns its size in bytes."""
    loader = loader_of(libs)
    total = 0
    for rel, source in layout(tools, libs).items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # follows symlinks: the library under its soname
        os.chmod(target, 0o755)
        total += target.stat().st_size
    (root / "bin").mkdir(exist_ok=True)
    for tool in tools:
        script = root / "bin" / tool.name
        script.write_text(wrapper(tool, loader))
        os.chmod(script, 0o755)
    (root / "VERSIONS").write_text(versions_text(versions))
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o755)
    return total


def build_tools_disk(path: Path, work: Path, libs: Sequence[str], versions: Mapping[str, str],
                     run: Callable[[Sequence[str], str], str], mkfs: str,
                     tools: Sequence[Tool] = TOOLS) -> None:
    """``path``: an ext4 image labelled ``kvmopstools`` with ``tools`` and ``libs``, made by
    ``mkfs.ext4 -d`` (no mount, no loop device) into a temp file renamed over ``path``:
    a VM attaching it sees the old image or the new one, never half of one."""
    content = work / "tools-root"
    content.mkdir()
    size = image_size_mib(stage(content, tools, libs, versions))
    # no journal: the guest only ever mounts it read-only; -m 0: nothing reserved
    write_ext4_image(path, size, [mkfs, "-q", "-F", "-L", TOOLS_LABEL, "-O", "^has_journal",
                                  "-m", "0", "-E", "root_owner=0:0", "-d", str(content)], run)


def write_ext4_image(path: Path, size_mib: int, mkfs_argv: Sequence[str],
                     run: Callable[[Sequence[str], str], str]) -> None:
    """``mkfs_argv`` (mkfs.ext4 and its options, without the image) run on a sparse
    ``size_mib`` temp file renamed over ``path``: the old image or the new one, never
    half of one; a failed mkfs leaves the old image."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as fh:
        fh.truncate(size_mib * 1024 * 1024)
    try:
        run([*mkfs_argv, str(tmp)], f"mkfs.ext4 of {path} failed")
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Kernel modules for the tiny guest: which files, in which load order.

Debian's kernel package ships no ``modules.dep`` (``depmod`` writes it at install
time, and we do not install the package), so when it is absent we derive the same
information from each module's ``.modinfo`` ELF section (``depends=``), which is
what depmod itself reads. The guest loads modules with busybox ``insmod``, which
resolves nothing, so the order computed here is the order of the ``insmod`` lines.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kvmops.errors import KvmopsError

# What the guest needs, in the order it must be loaded (dependencies are pulled in
# ahead of the module that needs them). crc32c_generic is not a symbol dependency
# of ext4/jbd2 but a crypto "softdep": ext4 with metadata_csum (mkfs.ext4's
# default) cannot mount without a crc32c implementation, and the guest has no
# modprobe for the kernel to request one with.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "8021q",
    "crc32c_generic",
    "ext4",
)

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModuleError(KvmopsError):
    """A kernel module is missing or unreadable in the kernel package."""


@dataclass(frozen=True)
class ModuleInfo:
    name: str  # canonical module name: file stem with '-' turned into '_'
    path: str  # relative to lib/modules/<version>/, as in modules.dep
    depends: tuple[str, ...]  # module names


def module_name(path: str) -> str:
    """``kernel/arch/x86/crypto/crc32c-intel.ko.xz`` -> ``crc32c_intel``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, ModuleInfo]:
    """Parse depmod's ``modules.dep`` (``path: dep-path dep-path ...`` per line)."""
    modules: dict[str, ModuleInfo] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        path, _, rest = line.partition(":")
        path = path.strip()
        deps = tuple(module_name(dep) for dep in rest.split())
        info = ModuleInfo(module_name(path), path, deps)
        modules[info.name] = info
    return modules


def format_modules_dep(modules: Iterable[ModuleInfo]) -> str:
    """The inverse of :func:`parse_modules_dep` (dependencies as paths)."""
    by_name = {m.name: m for m in modules}
    lines = []
    for info in sorted(by_name.values(), key=lambda m: m.path):
        deps = " ".join(by_name[d].path for d in info.depends if d in by_name)
        lines.append(f"{info.path}: {deps}".rstrip())
    return "\n".join(lines) + "\n"


def resolve_load_order(modules: Mapping[str, ModuleInfo], wanted: Iterable[str]) -> list[str]:
    """Module names to insmod, dependencies first, each once.

    ``wanted`` keeps its own order where dependencies allow (a depth-first
    post-order walk), so the result is deterministic.
    """
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str, needed_by: str | None) -> None:
        key = name.replace("-", "_")
        if key in done:
            return
        if key in active:
            cycle = " -> ".join([*active[active.index(key):], key])
            raise ModuleError(f"kernel module dependency cycle: {cycle}")
        info = modules.get(key)
        if info is None:
            who = f" (needed by {needed_by})" if needed_by else ""
            raise ModuleError(
                f"kernel module {key}{who} is not in the kernel package",
                hint="the kernel may build it in or lack it; pick another kernel package",
            )
        active.append(key)
        for dep in info.depends:
            visit(dep, key)
        active.pop()
        done.add(key)
        order.append(key)

    for name in wanted:
        visit(name, None)
    return order


def read_modinfo(data: bytes) -> dict[str, list[str]]:
    """Key/values of the ``.modinfo`` section of a 64-bit little-endian ELF module."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names_off = sections[shstrndx][4]
    for sec in sections:
        start = names_off + sec[0]
        name = data[start : data.index(b"\0", start)]
        if name == b".modinfo":
            raw = data[sec[4] : sec[4] + sec[5]]
            info: dict[str, list[str]] = {}
            for item in raw.split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    return {}


def read_module_file(path: Path) -> bytes:
    """A module's ELF bytes, decompressing ``.ko.xz`` on the host (busybox insmod
    in the guest gets a plain ``.ko``)."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        import gzip

        return gzip.decompress(path.read_bytes())
    raise ModuleError(
        f"kernel module {path} uses a compression kvmops cannot read",
        hint="use a kernel package with .ko or .ko.xz modules",
    )


class ModinfoIndex(Mapping[str, ModuleInfo]):
    """Module index of ``lib/modules/<version>`` without ``modules.dep``: names come
    from file names, dependencies from ``.modinfo``, read only for modules asked for
    (reading all ~4000 modules of a distribution kernel would take seconds)."""

    def __init__(self, moddir: Path) -> None:
        self._moddir = moddir
        self._files: dict[str, Path] = {}
        for path in sorted(moddir.rglob("*.ko*")):
            if path.name.endswith(_SUFFIXES):
                self._files.setdefault(module_name(path.name), path)
        self._cache: dict[str, ModuleInfo] = {}

    def __getitem__(self, name: str) -> ModuleInfo:
        if name not in self._cache:
            path = self._files[name]
            try:
                info = read_modinfo(read_module_file(path))
            except (ValueError, struct.error, lzma.LZMAError) as err:
                raise ModuleError(f"kernel module {path} is unreadable: {err}") from err
            deps = tuple(d for d in ",".join(info.get("depends", [])).split(",") if d)
            rel = path.relative_to(self._moddir).as_posix()
            self._cache[name] = ModuleInfo(name, rel, deps)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def module_index(moddir: Path) -> Mapping[str, ModuleInfo]:
    """``modules.dep`` if the tree has one, else a :class:`ModinfoIndex`."""
    dep_file = moddir / "modules.dep"
    if dep_file.is_file():
        return parse_modules_dep(dep_file.read_text())
    return ModinfoIndex(moddir)

"""An image's chain -- the image, its backing files and data files -- read safely.

Before qemu-img or libvirt opens an image whose chain kvmops did not build
itself, :func:`inspect` walks it one link at a time: each link's header is read
by ``qemu-img info -f FORMAT`` *without* ``--backing-chain`` (so qemu-img opens
neither the backing file nor the data file), and every file it names is checked
against the path policy *before* anything opens it:

* backing and data files must lie inside the allowed directories;
* a backing file must have its format recorded in the header (QEMU and libvirt
  would otherwise probe it), and that format must be raw or qcow2;
* protocol and ``json:`` references (``nbd://``, ``http://``...) are refused;
* encrypted images are refused (kvmops holds no keys);
* loops and absurdly deep chains are refused.

A raw link ends the chain: its content is data, whatever it looks like.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmops.errors import (
    KvmopsError,
    NotFoundError,
    PathRefusedError,
    UnsupportedError,
    ValidationError,
)
from kvmops.images import qemuimg, records
from kvmops.images.qemuimg import ImageInfo
from kvmops.images.usage import attached_formats
from kvmops.paths import PathPolicy, policy
from kvmops.storage import qcow2

MAX_DEPTH = 1024


@dataclass(frozen=True)
class Link:
    path: Path  # resolved
    format: str
    info: ImageInfo
    backing: Path | None = None  # resolved backing file (the next link)
    data_file: Path | None = None  # resolved external data file of a qcow2 link


@dataclass(frozen=True)
class Chain:
    links: tuple[Link, ...]

    @property
    def top(self) -> Link:
        return self.links[0]

    def files(self) -> list[Path]:
        """Every file of the chain: links top first, then data files."""
        return [link.path for link in self.links] + [
            link.data_file for link in self.links if link.data_file is not None]


def _reference(name: str, image: Path, kind: str) -> Path:
    """A backing/data file name from a header, as a path (relative to the image)."""
    if not name or "\x00" in name or "\n" in name:
        raise ValidationError(f"image {image} names an invalid {kind}")
    if name.startswith("json:") or (":" in name.split("/", 1)[0]):
        raise PathRefusedError(
            f"image {image} names {kind} '{name[:120]}', a protocol or json: reference",
            hint="kvmops follows plain files only")
    path = Path(name)
    if not path.is_absolute():
        path = image.parent / path
    return Path(os.path.realpath(path))


def _regular(path: Path, image: Path, kind: str) -> None:
    if not path.exists():
        raise ValidationError(f"{kind} {path} of image {image} does not exist",
                              hint="the chain is broken; restore the missing file")
    if not path.is_file():
        raise PathRefusedError(f"{kind} {path} of image {image} is not a regular file")


def inspect(path: str | os.PathLike[str], fmt: str, *, rules: PathPolicy | None = None,
            within: Sequence[Path] | None = None, trusted_top: bool = False,
            force_share: bool = True) -> Chain:
    """Walk the chain of ``path`` read as ``fmt``; refuse anything unsafe.

    ``within`` are the directories every link but the top must lie in (default: the
    image directories); the top itself is checked too unless ``trusted_top``.
    """
    links: list[Link] = []
    for link in _walk(path, fmt, rules or policy(), within, trusted_top, force_share):
        links.append(link)
    return Chain(tuple(links))


def inspect_partial(path: str | os.PathLike[str], fmt: str, *, rules: PathPolicy | None = None,
                    within: Sequence[Path] | None = None, trusted_top: bool = False
                    ) -> tuple[list[Link], KvmopsError | None]:
    """Like :func:`inspect`, but keep the links read before a problem and return the
    problem instead of raising it (for clean-up, which must not follow a bad link)."""
    links: list[Link] = []
    try:
        for link in _walk(path, fmt, rules or policy(), within, trusted_top, True):
            links.append(link)
    except KvmopsError as err:
        return links, err
    return links, None


def _walk(path: str | os.PathLike[str], fmt: str, rules: PathPolicy,
          within: Sequence[Path] | None, trusted_top: bool, force_share: bool
          ) -> Iterator[Link]:
    top = Path(os.path.realpath(os.fspath(path)))
    dirs = tuple(rules.image_dirs if within is None else within)
    seen: set[Path] = set()
    current, current_fmt = top, fmt
    rules.require_within(top, dirs, "image", trusted=trusted_top)
    while True:
        qemuimg.require_format(current_fmt, str(current))
        if current != top:
            rules.check_reference(current, image=top, kind="backing file", within=dirs)
        _regular(current, top, "image" if current == top else "backing file")
        if current in seen:
            raise ValidationError(f"the backing chain of {top} loops at {current}")
        if len(seen) >= MAX_DEPTH:
            raise ValidationError(f"the backing chain of {top} is deeper than {MAX_DEPTH}")
        seen.add(current)
        image = qemuimg.info(current, current_fmt, force_share=force_share)
        if image.encrypted:
            raise UnsupportedError(f"image {current} is encrypted",
                                   hint="kvmops holds no keys; decrypt it with qemu-img first")
        data_file: Path | None = None
        if image.data_file:
            data_file = _reference(image.data_file, current, "data file")
            rules.check_reference(data_file, image=current, kind="data file", within=dirs)
            _regular(data_file, current, "data file")
        backing: Path | None = None
        if image.backing_filename:
            backing = _reference(image.backing_filename, current, "backing file")
            if not image.backing_format:
                raise PathRefusedError(
                    f"image {current} names backing file {backing} without its format",
                    hint="QEMU would probe it; if you trust the image, record the format "
                         f"with 'qemu-img rebase -u -b {backing} -F FORMAT {current}'")
        yield Link(current, current_fmt, image, backing, data_file)
        if backing is None:
            return
        current, current_fmt = backing, str(image.backing_format)


@dataclass(frozen=True)
class HeaderLink:
    """A qcow2 file of a known chain, as its header names its backing file."""

    path: Path  # resolved
    backing: Path | None  # resolved
    backing_format: str | None


def _qcow2_header(path: Path) -> qcow2.Qcow2Header:
    try:
        with open(path, "rb", buffering=0) as fh:
            head = fh.read(qcow2.V3_MIN_HEADER)
            head += fh.read(qcow2.needed(head) + qcow2.MAX_BACKING_NAME - len(head))
        return qcow2.parse(head)
    except qcow2.HeaderError as err:
        raise ValidationError(f"image {path} is not a qcow2 file kvmops can read: {err}",
                              hint="run 'kvmops backup verify'") from None
    except OSError as err:
        raise NotFoundError(f"cannot read image {path}: {err.strerror}") from None


def read_expected(paths: Sequence[Path], *, within: Sequence[Path],
                  rules: PathPolicy | None = None) -> list[HeaderLink]:
    """The qcow2 links of a chain whose files the caller already knows (a backup's, from
    its authenticated manifests), top first, each checked as :func:`inspect` checks a
    link. Their headers are read here, a cluster each, without starting ``qemu-img``
    (a cold start per link cost a restore more than its own checks); the fields QEMU
    follows -- backing file name and format, data file, encryption -- are read as QEMU
    reads them, and the caller compares each link's ``backing`` with the next path:
    nothing here follows a name a header gives."""
    rules = rules or policy()
    dirs = tuple(within)
    resolved = [Path(os.path.realpath(p)) for p in paths]
    if not resolved:
        return []
    top = resolved[0]
    if len(set(resolved)) != len(resolved):
        raise ValidationError(f"the backing chain of {top} names one file twice")
    links: list[HeaderLink] = []
    for current in resolved:
        if current == top:
            rules.require_within(top, dirs, "image", trusted=False)
        else:
            rules.check_reference(current, image=top, kind="backing file", within=dirs)
        _regular(current, top, "image" if current == top else "backing file")
        header = _qcow2_header(current)
        if header.encrypted:
            raise UnsupportedError(f"image {current} is encrypted",
                                   hint="kvmops holds no keys; decrypt it with qemu-img first")
        if header.data_file:
            raise PathRefusedError(f"image {current} names an external data file",
                                   hint="a backup's files never do; run 'kvmops backup verify'")
        backing: Path | None = None
        if header.backing:
            if header.backing_name is None:
                raise ValidationError(f"image {current} names a backing file kvmops cannot "
                                      "read", hint="run 'kvmops backup verify'")
            backing = _reference(header.backing_name, current, "backing file")
            if not header.backing_format:
                raise PathRefusedError(
                    f"image {current} names backing file {backing} without its format",
                    hint="QEMU would probe it; run 'kvmops backup verify'")
        links.append(HeaderLink(current, backing, header.backing_format))
    return links


@dataclass(frozen=True)
class UserImage:
    """An image a user brought in: its chain and how its format was chosen."""

    chain: Chain
    format_source: str  # "given", "recorded" or "default"
    notes: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.chain.top.path

    @property
    def format(self) -> str:
        return self.chain.top.format


def choose_format(path: Path, given: str | None) -> tuple[str, str]:
    """The format to read ``path`` as: the one given, the one kvmops recorded, else raw."""
    if given:
        return qemuimg.require_format(given, str(path)), "given"
    recorded = records.recorded_format(path)
    if recorded:
        return recorded, "recorded"
    return "raw", "default"


def open_user_image(path: str | os.PathLike[str], fmt: str | None, *,
                    rules: PathPolicy | None = None, trusted: bool = False,
                    force_share: bool = True) -> UserImage:
    """Check an existing image named by a caller: path policy, format (never probed),
    not read differently from how a running VM reads it, and its whole chain."""
    rules = rules or policy()
    real = rules.image_path(path, trusted=trusted)
    if not real.exists():
        raise NotFoundError(f"image {path} does not exist", hint="check the path")
    chosen, source = choose_format(real, fmt)
    notes: list[str] = []
    if source == "default":
        lookalike = records.header_lookalike(real)
        if lookalike and lookalike != "raw":
            notes.append(f"{real} has no recorded format and is read as raw; its first bytes "
                         f"look like {lookalike}: if you trust it, name --format {lookalike}")
    if chosen != "raw":
        holders = {vm: f for vm, f in attached_formats(real).items() if f != chosen}
        if holders:
            listed = ", ".join(f"'{vm}' ({f})" for vm, f in sorted(holders.items()))
            raise PathRefusedError(
                f"image {real} is in use by running VM {listed}; it cannot be read as "
                f"{chosen}", hint="its content is that VM's data: read it as the VM does")
    chain = inspect(real, chosen, rules=rules, trusted_top=trusted, force_share=force_share)
    return UserImage(chain, source, tuple(notes))

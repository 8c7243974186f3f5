"""The one path policy: which files and directories kvmops may touch for a caller.

Every path a caller names (an image, a kernel, a repository, a restore target, an
images directory) is resolved here -- ``..`` and symbolic links -- and checked:

* **Image paths** (disks, kernels, CD-ROMs, restore targets) must lie inside an
  allowed *image directory*; **repositories** inside an allowed *backup
  directory*. Both sets come from the configuration (:mod:`kvmops.config`).
* An **images directory** for new disks must *be* one of the image directories:
  kvmops never creates arbitrary subdirectories for a caller.
* Nothing may lie in the **state directory** (database, manifest key, job
  records), whoever asks: it is never an allowed directory, and a configuration
  in which it overlaps an allowed directory is refused, as is one in which image
  and backup directories overlap (a converted image must never land inside a
  repository).

A *trusted* caller (root at the command line, who can read any file anyway) may
name top-level paths outside the allowed directories. References *inside* images
(backing files, data files) are never trusted: :mod:`kvmops.images.chain` checks
them against :meth:`PathPolicy.check_reference`, for every caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmops.config import Settings, settings
from kvmops.errors import ConfigError, NotFoundError, PathRefusedError, ValidationError

CONFIG_HINT = "ask an admin to add the directory to image_dirs/backup_dirs in " \
              "/etc/kvmops/config.toml"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def is_within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _overlap(a: Path, b: Path) -> bool:
    return is_within(a, b) or is_within(b, a)


def absolute(value: str | os.PathLike[str], what: str = "path") -> Path:
    """A caller's path as an absolute path (no NUL, no surrogates, not empty)."""
    text = os.fspath(value)
    if not text or "\x00" in text:
        raise ValidationError(f"invalid {what}: empty or contains NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"invalid {what}: not valid UTF-8") from None
    path = Path(text)
    if not path.is_absolute():
        raise ValidationError(f"{what} '{text}' must be an absolute path")
    return path


@dataclass(frozen=True)
class PathPolicy:
    image_dirs: tuple[Path, ...]
    backup_dirs: tuple[Path, ...]
    state_dir: Path
    images_dir: Path  # the default for new disks (the first image directory)

    @classmethod
    def from_settings(cls, cfg: Settings | None = None,
                      extra_image_dirs: Sequence[Path] = (),
                      extra_backup_dirs: Sequence[Path] = ()) -> PathPolicy:
        cfg = cfg or settings()
        images = tuple(dict.fromkeys(_real(d) for d in [*cfg.image_dirs, *extra_image_dirs]))
        backups = tuple(dict.fromkeys(_real(d) for d in [*cfg.backup_dirs,
                                                           *extra_backup_dirs]))
        policy = cls(image_dirs=images, backup_dirs=backups, state_dir=_real(cfg.state_dir),
                     images_dir=_real(cfg.images_dir))
        policy.validate()
        return policy

    def validate(self) -> None:
        """Refuse configurations that let a caller reach kvmops' own state."""
        for kind, dirs in (("image", self.image_dirs), ("backup", self.backup_dirs)):
            for directory in dirs:
                if directory == Path("/"):
                    raise ConfigError(f"the {kind} directory / would allow every file")
                if _overlap(directory, self.state_dir):
                    raise ConfigError(
                        f"{kind} directory {directory} overlaps the state directory "
                        f"{self.state_dir}",
                        hint="the state directory (database, keys) must never be reachable "
                             "through an allowed directory: move one of them")
        for image in self.image_dirs:
            for backup in self.backup_dirs:
                if _overlap(image, backup):
                    raise ConfigError(
                        f"image directory {image} overlaps backup directory {backup}",
                        hint="keep images and backup repositories in separate directories")

    # ---------------------------------------------------------------- checks
    def _refuse_state(self, real: Path, what: str, shown: str) -> None:
        if is_within(real, self.state_dir):
            raise PathRefusedError(f"{what} {shown} is inside kvmops' state directory "
                                   f"{self.state_dir}", hint="no operation may name it")

    def _inside(self, value: str | os.PathLike[str], dirs: Iterable[Path], kind: str,
                what: str, trusted: bool) -> Path:
        path = absolute(value, what)
        real = _real(path)
        self._refuse_state(real, what, str(path))
        if trusted or any(is_within(real, d) for d in dirs):
            return real
        listed = ", ".join(str(d) for d in dirs) or "none configured"
        raise PathRefusedError(f"{what} {path} is outside the allowed {kind} directories "
                               f"({listed})", hint=f"use a path inside one of them, or "
                                                   f"{CONFIG_HINT}")

    def image_path(self, value: str | os.PathLike[str], *, trusted: bool = False,
                   what: str = "image") -> Path:
        """An image, kernel, initrd, ISO or restore target: inside an image directory."""
        return self._inside(value, self.image_dirs, "image", what, trusted)

    def repository(self, value: str | os.PathLike[str], *, trusted: bool = False) -> Path:
        """A backup repository: inside a backup directory."""
        return self._inside(value, self.backup_dirs, "backup", "repository", trusted)

    def new_images_dir(self, value: str | os.PathLike[str] | None, *, trusted: bool = False
                       ) -> Path:
        """Where new disks go: one of the image directories (or anywhere, for a trusted
        caller). It must exist; kvmops does not create directories for callers."""
        if value is None:
            directory = self.images_dir
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)  # configured: made once
        else:
            path = absolute(value, "images directory")
            directory = _real(path)
            self._refuse_state(directory, "images directory", str(path))
            if not trusted and directory not in self.image_dirs:
                listed = ", ".join(str(d) for d in self.image_dirs)
                raise PathRefusedError(
                    f"images directory {path} is not one of the image directories ({listed})",
                    hint=f"leave it out for {self.images_dir}, name one of them, or "
                         f"{CONFIG_HINT}")
        if not directory.is_dir():
            raise NotFoundError(f"images directory {directory} does not exist",
                                hint="create it (an admin's job) or choose another")
        return directory

    def check_reference(self, real: Path, *, image: Path, kind: str,
                        within: Sequence[Path] | None = None) -> None:
        """A backing or data file named inside ``image``: it must stay in the allowed
        directories (``within``, default the image directories)."""
        dirs = self.image_dirs if within is None else within
        self._refuse_state(real, f"{kind} of {image}:", str(real))
        if not any(is_within(real, d) for d in dirs):
            raise PathRefusedError(
                f"image {image} names {kind} {real}, outside the allowed directories "
                f"({', '.join(str(d) for d in dirs)})",
                hint="kvmops never follows an image's references out of them; if you trust "
                     "the image, copy its chain into an image directory")

    def require_within(self, real: Path, dirs: Sequence[Path], what: str, *,
                       trusted: bool = False) -> None:
        """``real`` (already resolved) is outside the state directory and, unless
        ``trusted``, inside one of ``dirs``."""
        self._refuse_state(real, what, str(real))
        if not trusted and not any(is_within(real, d) for d in dirs):
            raise PathRefusedError(
                f"{what} {real} is outside the allowed directories "
                f"({', '.join(str(d) for d in dirs)})",
                hint=f"use a path inside one of them, or {CONFIG_HINT}")

    def in_image_dirs(self, path: Path) -> bool:
        real = _real(path)
        return any(is_within(real, d) for d in self.image_dirs) and not is_within(
            real, self.state_dir)


def policy() -> PathPolicy:
    """The policy of the current configuration (raises ConfigError when it is unsafe)."""
    return PathPolicy.from_settings()

"""The path policy: allowed directories, the state directory, configuration checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmops.config import Settings
from kvmops.errors import ConfigError, NotFoundError, PathRefusedError, ValidationError
from kvmops.paths import PathPolicy


def _policy(tmp_path: Path, **overrides: object) -> PathPolicy:
    values: dict[str, object] = {
        "uri": "qemu:///system", "images_dir": tmp_path / "images",
        "image_dirs": (tmp_path / "images", tmp_path / "iso"),
        "backup_dirs": (tmp_path / "backups",), "state_dir": tmp_path / "state",
        "cache_dir": tmp_path / "cache"}
    values.update(overrides)
    for key in ("images_dir",):
        Path(str(values[key])).mkdir(parents=True, exist_ok=True)
    for key in ("image_dirs", "backup_dirs"):
        for directory in values[key]:  # type: ignore[attr-defined]
            Path(directory).mkdir(parents=True, exist_ok=True)
    Path(str(values["state_dir"])).mkdir(parents=True, exist_ok=True)
    return PathPolicy.from_settings(Settings(**values))  # type: ignore[arg-type]


def test_paths_inside_are_resolved(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    got = rules.image_path(str(tmp_path / "images" / "sub" / ".." / "a.qcow2"))
    assert got == (tmp_path / "images" / "a.qcow2").resolve()
    assert rules.image_path(tmp_path / "iso" / "d.iso").parent == (tmp_path / "iso").resolve()
    assert rules.repository(tmp_path / "backups" / "offsite").name == "offsite"


@pytest.mark.parametrize("path", ["/etc/shadow", "/tmp/x.qcow2", "images/../../etc/passwd"])
def test_paths_outside_are_refused(tmp_path: Path, path: str) -> None:
    rules = _policy(tmp_path)
    target = path if path.startswith("/") else str(tmp_path / path)
    with pytest.raises(PathRefusedError, match="outside the allowed image directories"):
        rules.image_path(target)


def test_symlink_out_of_an_allowed_dir_is_refused(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    (tmp_path / "images" / "link").symlink_to("/etc")
    with pytest.raises(PathRefusedError):
        rules.image_path(tmp_path / "images" / "link" / "shadow")


def test_repositories_and_images_are_separate(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    with pytest.raises(PathRefusedError, match="backup directories"):
        rules.repository(tmp_path / "images" / "repo")
    with pytest.raises(PathRefusedError, match="image directories"):
        rules.image_path(tmp_path / "backups" / "vm" / "backups" / "x" / "manifest.json")


def test_state_dir_is_refused_even_to_a_trusted_caller(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    with pytest.raises(PathRefusedError, match="state directory"):
        rules.image_path(tmp_path / "state" / "kvmops.db", trusted=True)
    assert rules.image_path("/tmp/elsewhere.qcow2", trusted=True) == Path(
        "/tmp/elsewhere.qcow2").resolve()


def test_relative_and_nul_paths_are_invalid(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    with pytest.raises(ValidationError, match="absolute"):
        rules.image_path("a.qcow2")
    with pytest.raises(ValidationError, match="NUL"):
        rules.image_path("/a\x00b")


def test_images_dir_must_be_a_configured_one(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    assert rules.new_images_dir(None) == (tmp_path / "images").resolve()
    assert rules.new_images_dir(tmp_path / "iso") == (tmp_path / "iso").resolve()
    (tmp_path / "images" / "sub").mkdir()
    with pytest.raises(PathRefusedError, match="not one of the image directories"):
        rules.new_images_dir(tmp_path / "images" / "sub")
    with pytest.raises(NotFoundError):
        rules.new_images_dir(tmp_path / "nowhere", trusted=True)


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("image_dirs", ("STATE",), "overlaps the state directory"),
    ("image_dirs", ("PARENT",), "overlaps the state directory"),
    ("backup_dirs", ("STATE/sub",), "overlaps the state directory"),
    ("backup_dirs", ("IMAGES/repos",), "overlaps backup directory"),
    ("image_dirs", ("/",), "would allow every file"),
])
def test_unsafe_configurations_are_refused(tmp_path: Path, field: str, value: tuple[str, ...],
                                           fragment: str) -> None:
    names = {"STATE": str(tmp_path / "state"), "PARENT": str(tmp_path),
             "IMAGES": str(tmp_path / "images")}
    dirs = []
    for item in value:
        for key, real in names.items():
            item = item.replace(key, real)
        dirs.append(Path(item))
    with pytest.raises(ConfigError, match=fragment):
        _policy(tmp_path, **{field: tuple(dirs)})


def test_reference_checks(tmp_path: Path) -> None:
    rules = _policy(tmp_path)
    image = tmp_path / "images" / "a.qcow2"
    rules.check_reference((tmp_path / "images" / "base.qcow2").resolve(), image=image,
                          kind="backing file")
    with pytest.raises(PathRefusedError, match="backing file /etc/shadow"):
        rules.check_reference(Path("/etc/shadow"), image=image, kind="backing file")

"""Pure parts of the web UI's reads (services/web_views.py): the image directory
listing (names and sizes only, links and directories left out) and VM names from URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmops.errors import NotFoundError
from kvmops.paths import PathPolicy
from kvmops.services import web_views


@pytest.fixture
def image_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    images, other = tmp_path / "images", tmp_path / "more"
    images.mkdir()
    other.mkdir()
    rules = PathPolicy(image_dirs=(images, other, tmp_path / "missing"), backup_dirs=(),
                       state_dir=tmp_path / "state", images_dir=images)
    monkeypatch.setattr(web_views, "policy", lambda: rules)
    return images


def test_image_files_lists_regular_files_only(image_dir: Path, tmp_path: Path) -> None:
    (image_dir / "b.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 60)  # looks like qcow2: not read
    (image_dir / "a.raw").write_bytes(b"x" * 10)
    (image_dir / "sub").mkdir()
    (image_dir / "link.raw").symlink_to(image_dir / "a.raw")
    (tmp_path / "more" / "c.iso").write_bytes(b"")
    os.utime(image_dir / "a.raw", (1_700_000_000, 1_700_000_000))
    found = web_views.image_files()
    assert [(f.path, f.size) for f in found] == [
        (str(image_dir / "a.raw"), 10), (str(image_dir / "b.qcow2"), 64),
        (str(tmp_path / "more" / "c.iso"), 0)]
    assert found[0].modified.timestamp() == 1_700_000_000


def test_image_files_stops_at_the_limit(image_dir: Path) -> None:
    for i in range(5):
        (image_dir / f"disk{i}.raw").write_bytes(b"")
    assert [Path(f.path).name for f in web_views.image_files(limit=3)] == [
        "disk0.raw", "disk1.raw", "disk2.raw"]


@pytest.mark.parametrize("name", ["web1", "a.b-c_d+e"])
def test_check_name_accepts_vm_names(name: str) -> None:
    assert web_views.check_name(name) == name


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 300])
def test_check_name_is_a_not_found(name: str) -> None:
    with pytest.raises(NotFoundError, match="no VM named"):
        web_views.check_name(name)

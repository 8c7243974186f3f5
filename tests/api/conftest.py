"""Fixtures of the API tests: a real ``kvmops serve`` on a free port with a
temporary SQLite database (and, for some tests, PostgreSQL)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.config import settings
from tests.integration.api_server import ApiServer, add_users, postgres_cluster, start_server
from tests.integration.conftest import (  # noqa: F401  (fixtures shared with integration)
    backups_dir,
    host,
    images_dir,
    repo_dir,
    tiny_guest,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/api/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kvmops-api-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def api(workdir: Path, images_dir: Path, backups_dir: Path  # noqa: F811
        ) -> Iterator[ApiServer]:
    """One server on SQLite with users admin, op (operator), view (viewer) and tokens.

    Its image directories: this session's (so requests may name it as images_dir) and
    the tiny guest's (kernel and initrd); its backup directory: this session's."""
    guest_dir = settings().cache_dir / "guest"  # the tiny guest's kernel and initrd
    server = start_server(f"sqlite:///{workdir / 'api.db'}", workdir, "--allow-dir",
                          str(images_dir), "--allow-dir", str(guest_dir), "--backup-dir",
                          str(backups_dir))
    try:
        add_users(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url

"""cli/, api/ and web/ are adapters: they reach VMs, backups, snapshots, guests, monitors and
images only through kvmops.services, never hold the host boundary's objects (a connection
comes from kvmops.services.session) and never import libvirt. Every face reaches the state
database only through kvmops.services too (auth, users, jobs, audit, database): none
imports kvmops.store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kvmops"
DOMAIN = ("kvmops.vm", "kvmops.backup", "kvmops.snapshot", "kvmops.agent", "kvmops.monitor",
          "kvmops.images", "kvmops.host", "libvirt", "libvirt_qemu")
STORE = ("kvmops.store",)
FACES = sorted([*SRC.glob("cli/*.py"), *SRC.glob("api/**/*.py"), *SRC.glob("web/**/*.py")])


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at its top or inside a function; ``from a import b``
    counts as ``a`` and as ``a.b`` (``b`` may be a module)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _forbidden(path: Path, packages: tuple[str, ...]) -> list[str]:
    return sorted({name for name in _imports(path)
                   if any(name == p or name.startswith(p + ".") for p in packages)})


@pytest.mark.parametrize("path", sorted([*SRC.glob("cli/*.py"), *SRC.glob("api/**/*.py")]),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_adapter_imports_no_domain_package(path: Path) -> None:
    found = _forbidden(path, DOMAIN)
    assert found == [], f"{path.relative_to(SRC)} imports {found}: call kvmops.services"


@pytest.mark.parametrize("path", FACES, ids=lambda p: str(p.relative_to(SRC)))
def test_face_reaches_the_database_only_through_services(path: Path) -> None:
    found = _forbidden(path, STORE)
    assert found == [], (f"{path.relative_to(SRC)} imports {found}: use kvmops.services "
                         "(auth, users, jobs, audit, database)")


def test_the_faces_are_where_the_check_looks() -> None:
    names = {str(p.relative_to(SRC)) for p in FACES}
    assert {"api/deps.py", "api/routes/system.py", "web/pages.py", "web/auth.py",
            "cli/job.py", "cli/serve.py"} <= names


@pytest.mark.parametrize("source", [
    "from kvmops.store import users\n",
    "from kvmops.store.users import Principal\n",
    "import kvmops.store.db\n",
    "from kvmops import store\n",
    "def lazy() -> None:\n    from kvmops.store import jobs\n",
])
def test_the_check_sees_every_form_of_a_store_import(tmp_path: Path, source: str) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(source)
    assert _forbidden(sample, STORE) != []


def test_the_check_lets_services_through(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from kvmops.services import auth, users\n"
                      "from kvmops.services.jobs import JobView\nimport kvmops.errors\n")
    assert _forbidden(sample, (*STORE, *DOMAIN)) == []

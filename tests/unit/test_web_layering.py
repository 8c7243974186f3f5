"""The web UI is a face: it calls services (and the API's auth plumbing), never the
domain packages, libvirt or the state database (kvmops.store: sessions, users, jobs and
the audit log are reached through kvmops.services). A new import of one of them in
kvmops/web fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import kvmops.web

WEB = Path(kvmops.web.__file__).parent
FORBIDDEN = ("libvirt", "libvirt_qemu", "kvmops.vm", "kvmops.backup", "kvmops.snapshot",
             "kvmops.agent", "kvmops.monitor", "kvmops.images", "kvmops.host", "kvmops.store")


def imported_modules(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_web_imports_only_services() -> None:
    sources = sorted(WEB.glob("**/*.py"))
    assert len(sources) >= 5  # the package is where this test thinks it is
    offending = [(path.name, module) for path in sources for module in imported_modules(path)
                 if any(module == f or module.startswith(f + ".") for f in FORBIDDEN)]
    assert offending == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import libvirt\nfrom kvmops.vm import lifecycle\n"
                      "from kvmops.services import vms\n")
    assert imported_modules(sample) == ["libvirt", "kvmops.vm", "kvmops.vm.lifecycle",
                                        "kvmops.services", "kvmops.services.vms"]


def test_the_check_sees_a_database_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from kvmops import store\nfrom kvmops.store.users import Principal\n")
    found = [m for m in imported_modules(sample)
             if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert found == ["kvmops.store", "kvmops.store.users", "kvmops.store.users.Principal"]

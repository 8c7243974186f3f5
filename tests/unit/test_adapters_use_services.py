"""cli/ and api/ are adapters: they reach VMs, backups, snapshots, guests, monitors and
images only through kvmops.services, never hold the host boundary's objects (a connection
comes from kvmops.services.session) and never import libvirt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kvmops"
DOMAIN = ("kvmops.vm", "kvmops.backup", "kvmops.snapshot", "kvmops.agent", "kvmops.monitor",
          "kvmops.images", "kvmops.host", "libvirt", "libvirt_qemu")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted([*SRC.glob("cli/*.py"), *SRC.glob("api/**/*.py")]),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_adapter_imports_no_domain_package(path: Path) -> None:
    found = [name for name in _imports(path)
             if any(name == d or name.startswith(d + ".") for d in DOMAIN)]
    assert found == [], f"{path.relative_to(SRC)} imports {found}: call kvmops.services"

"""Only kvmops.host talks to libvirt: no other module imports ``libvirt`` or
``libvirt_qemu`` (at the top or inside a function) or names ``libvirtError``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "kvmops"
LIBVIRT_MODULES = {"libvirt", "libvirt_qemu", "libvirt_lxc"}

def _libvirt_uses(path: Path) -> list[str]:
    """Every import of a libvirt module and every use of ``libvirtError`` in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in LIBVIRT_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in LIBVIRT_MODULES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif (isinstance(node, ast.Attribute) and node.attr == "libvirtError") or (
                isinstance(node, ast.Name) and node.id == "libvirtError"):
            found.append(f"line {node.lineno}: libvirtError")
    return found


def _offenders() -> dict[str, list[str]]:
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("host/"):
            continue
        uses = _libvirt_uses(path)
        if uses:
            offenders[relative] = uses
    return offenders


def test_only_host_imports_libvirt() -> None:
    offenders = _offenders()
    assert not offenders, (
        "libvirt used outside kvmops/host (add a typed adapter in host/ instead): "
        + "; ".join(f"{name}: {', '.join(uses)}" for name, uses in offenders.items()))


def test_the_check_sees_every_form(tmp_path: Path) -> None:
    """The walk finds top-level, nested and from-imports and the error class."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport libvirt\n\ndef f():\n    import libvirt_qemu\n"
                      "    from libvirt import virDomain\n    try:\n        pass\n"
                      "    except libvirt.libvirtError:\n        pass\n")
    uses = _libvirt_uses(sample)
    assert len(uses) == 4, uses
    clean = tmp_path / "clean.py"
    clean.write_text('"""from libvirt\'s docs: import libvirt is not done here."""\nimport os\n')
    assert _libvirt_uses(clean) == []


"""The ``kvmops`` command starts quickly: importing its entry point loads no command
module and none of the heavy layers; the static command table stays true."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvmops.cli import main

HEAVY = ("kvmops.api", "kvmops.web", "kvmops.backup", "kvmops.store", "fastapi", "sqlalchemy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return set(json.loads(out.splitlines()[-1]))


def _loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_importing_the_entry_point_loads_no_heavy_layer() -> None:
    modules = _modules_after("import kvmops.cli.main")
    for heavy in (*HEAVY, "kvmops.cli.vm", "kvmops.cli.host", "pydantic", "lxml", "libvirt"):
        assert not _loaded(modules, heavy), heavy


def test_help_lists_every_command_without_importing_them() -> None:
    code = ("import sys\nsys.argv = ['kvmops', '--help']\nfrom kvmops.cli import main\n"
            "try:\n    main.run()\nexcept SystemExit:\n    pass\n")
    modules = _modules_after(code)
    assert not any(_loaded(modules, f"kvmops.cli.{name}") for name in main.COMMANDS)
    for heavy in HEAVY:
        assert not _loaded(modules, heavy), heavy
    result = subprocess.run([sys.executable, "-m", "kvmops.cli.main", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2}
    assert set(main.COMMANDS) <= listed, listed


@pytest.mark.parametrize("name", sorted(main.COMMANDS))
def test_each_table_entry_loads_its_command_with_the_same_help(name: str) -> None:
    command = main.load_command(name)
    assert command.name == name
    own = (command.short_help or command.help or "").strip().split("\n\n")[0]
    assert " ".join(own.split()) == main.COMMANDS[name][1]


def test_version_is_static_and_printed() -> None:
    import kvmops

    result = subprocess.run([sys.executable, "-m", "kvmops.cli.main", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kvmops {kvmops.__version__}\n"
    assert kvmops.__version__.count(".") == 2


def test_vm_list_path_loads_no_api_web_backup_or_store() -> None:
    code = ("from kvmops.cli import main\nmain.load_command('vm')\n"
            "main.load_command('guest')\n")
    modules = _modules_after(code)
    for heavy in HEAVY:
        assert not _loaded(modules, heavy), heavy

"""The systemd unit shipped in packaging/: valid for systemd, restarts on failure but
not on a configuration error (ConfigError's exit code), starts ``kvmops serve``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from kvmops.errors import ConfigError
from tests.conftest import REPO

UNIT = REPO / "packaging" / "kvmops-serve.service"


def _settings() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
        else:
            key, _, value = line.partition("=")
            sections[current][key] = value
    return sections


def test_the_unit_restarts_failures_but_not_configuration_errors() -> None:
    unit = _settings()
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert str(ConfigError.exit_code) in service["RestartPreventExitStatus"].split()
    assert service["ExecStart"].split()[1:2] == ["serve"]
    assert service["ExecStart"].split()[0].endswith("/kvmops")
    assert "libvirtd.service" in unit["Unit"]["After"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` with ExecStart pointing at this environment's kvmops
    (it checks that the program exists); any complaint fails."""
    assert shutil.which("systemd-analyze"), "systemd-analyze (package systemd) is needed"
    unit = tmp_path / UNIT.name
    kvmops_bin = Path(sys.executable).parent / "kvmops"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/kvmops", str(kvmops_bin)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_serve_with_a_broken_configuration_exits_with_the_unit_s_no_restart_code(
        tmp_path: Path) -> None:
    """What RestartPreventExitStatus relies on: ``kvmops serve`` exits 78 in one line."""
    from tests.conftest import assert_one_line_error, run_cli

    config = tmp_path / "config.toml"
    config.write_text("state_dir = [not toml\n")
    result = run_cli("serve", "--port", "1", "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
                     env={"KVMOPS_CONFIG": str(config)})
    assert_one_line_error(result, ConfigError.exit_code, str(config), "not valid TOML")
    assert str(ConfigError.exit_code) in _settings()["Service"]["RestartPreventExitStatus"]

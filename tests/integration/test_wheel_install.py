"""The package as users get it: build the wheel, install it into a fresh virtual
environment (no system site-packages: only the wheel and its dependencies from the
index), and run the installed ``kvmops`` against the real libvirtd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kvmops
from tests.conftest import REPO

# Assets the web UI serves; the vendored ones (noVNC, Swagger UI, xterm.js) are put
# into the source tree by scripts/setup-host.sh (git-ignored) and must be in the wheel.
ASSETS = ("kvmops/web/templates/base.html", "kvmops/web/static/app.js",
          "kvmops/web/static/swagger/swagger-ui-bundle.js",
          "kvmops/web/static/xterm/xterm.js", "kvmops/web/static/novnc/core/rfb.js",
          "kvmops/devguest/init.sh", "kvmops/store/migrations/env.py", "kvmops/py.typed",
          "kvmops/metrics/content/kvmops-alerts.rules.yml",
          "kvmops/metrics/content/kvmops-grafana-dashboard.json")


def _run(argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    # Nothing from this checkout may leak in: no PYTHONPATH, another working directory.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.timeout(1800)
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
          str(REPO)], cwd=tmp_path)
    [wheel] = wheels.glob("kvmops-*.whl")
    assert wheel.name.startswith(f"kvmops-{kvmops.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ASSETS:
        assert asset in names, asset

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    # Dependencies come from the index (pip's cache keeps this quick on a second run;
    # libvirt-python is built from source once: libvirt-dev and pkg-config are needed).
    _run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], cwd=tmp_path)

    kvmops_bin = str(venv / "bin" / "kvmops")
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import kvmops, importlib.metadata as m; "
                  "print(kvmops.__file__); print(m.version('kvmops'))"], cwd=tmp_path)
    installed_file, metadata_version = where.stdout.split()
    assert installed_file.startswith(str(venv)), installed_file
    assert metadata_version == kvmops.__version__

    version = _run([kvmops_bin, "--version"], cwd=tmp_path)
    assert version.stdout == f"kvmops {kvmops.__version__}\n"

    info = json.loads(_run([kvmops_bin, "host", "info", "--json"], cwd=tmp_path).stdout)
    assert info["uri"] == "qemu:///system" and info["libvirt_version"], info

    text = _run([kvmops_bin, "host", "info"], cwd=tmp_path).stdout
    assert "libvirt" in text and "QEMU" in text
    assert "complete -o default -F _kvmops_completion kvmops" in _run(
        [kvmops_bin, "completion", "bash"], cwd=tmp_path).stdout
    assert "KvmopsVMCrashed" in _run([kvmops_bin, "monitoring", "rules"], cwd=tmp_path).stdout

    # The installed package finds its web assets where the server looks for them.
    site = Path(installed_file).parent
    for asset in ASSETS:
        assert (site.parent / asset).is_file(), asset

"""Without the libvirt Python binding (libvirt-python not built: libvirt-dev or
pkg-config missing), ``kvmops host info`` says so in one line with the remedy."""

from __future__ import annotations

import subprocess
import sys

from kvmops.errors import HostUnavailableError
from tests.conftest import CliResult, assert_one_line_error

# A meta-path finder that makes ``import libvirt`` fail as on a host without the binding.
_HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('libvirt', 'libvirtmod', 'libvirt_qemu', 'libvirtmod_qemu'):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ['kvmops', *sys.argv[1:]]
from kvmops.cli.main import run
run()
"""


def _run(*args: str) -> CliResult:
    proc = subprocess.run([sys.executable, "-c", _HIDE, *args], capture_output=True,
                          text=True, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_host_info_without_the_binding_is_one_line_with_the_remedy() -> None:
    result = _run("host", "info")
    assert_one_line_error(result, HostUnavailableError.exit_code, "libvirt Python binding",
                          "No module named 'libvirt", "apt install libvirt-dev pkg-config",
                          "pip install libvirt-python", "python3-libvirt")


def test_commands_without_libvirt_still_work_without_the_binding() -> None:
    assert _run("--version").code == 0
    assert _run("completion", "bash").code == 0
    assert _run("config", "show").code == 0

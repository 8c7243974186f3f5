"""``kvmops vm setvcpus`` and ``vm setmem``: a VM's vCPUs and memory, in its persistent
definition (like ``virsh setvcpus --config`` and ``setmem``/``setmaxmem --config``),
through the same service as ``PUT /api/v1/vms/{name}/vcpus`` and ``/memory``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, print_json, warn

if TYPE_CHECKING:
    from kvmops.services.vm_config import ConfigChange

# The service (pydantic, lxml) is imported inside the commands: this module loads with
# every ``kvmops vm`` command (kvmops.cli.main keeps start-up quick).

NameArg = typer.Argument(..., help="VM name.")


def register(app: typer.Typer) -> None:
    """Add the commands to the ``vm`` group."""

    @app.command("setvcpus")
    def setvcpus_cmd(name: str = NameArg,
                     count: int = typer.Argument(..., min=1, help="Number of vCPUs."),
                     json_out: bool = JsonOption, uri: str | None = UriOption,
                     host_name: str | None = HostOption) -> None:
        """Set the VM's vCPUs (a running VM gets them at its next start)."""
        uri = on_host(uri, host_name)
        from kvmops.services import vm_config
        from kvmops.services.caller import Caller

        with connect(uri) as host:
            result = vm_config.set_vcpus(Caller.local(), host, name, count)
        _report(result, json_out)

    @app.command("setmem")
    def setmem_cmd(name: str = NameArg,
                   size: str = typer.Argument(..., help="e.g. 512M or 2G; a bare number "
                                                        "is MiB."),
                   force: bool = typer.Option(False, "--force",
                                              help="Allow more than the host has."),
                   json_out: bool = JsonOption, uri: str | None = UriOption,
                   host_name: str | None = HostOption) -> None:
        """Set the VM's memory (a running VM gets it at its next start)."""
        uri = on_host(uri, host_name)
        from kvmops.services import vm_config
        from kvmops.services.caller import Caller
        from kvmops.sizes import parse_memory

        with connect(uri) as host:
            result = vm_config.set_memory(Caller.local(), host, name, parse_memory(size),
                                          force=force)
        _report(result, json_out)


def _report(result: ConfigChange, json_out: bool) -> None:
    if json_out:
        print_json(result)
        return
    for note in result.notes:
        warn(note)
    info(result.message)

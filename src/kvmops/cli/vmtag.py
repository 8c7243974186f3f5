"""``kvmops vm tag``: tags a VM carries (backup schedules with ``--tag`` cover them)."""

from __future__ import annotations

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, on_host
from kvmops.cli.output import info, print_json, print_table
from kvmops.services.caller import Caller

app = typer.Typer(help="VM tags (kvmops' metadata in the definition).", no_args_is_help=True)


@app.command("add")
def add_cmd(vm: str = typer.Argument(..., help="VM name."),
            tags: list[str] = typer.Argument(..., help="One or more tags."),
            uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """Add tags to a VM."""
    from kvmops.services import vm_tags

    uri = on_host(uri, host_name)
    now = vm_tags.add(Caller.local(), uri, vm, tags)
    info(f"VM '{vm}' tags: {' '.join(now) or '(none)'}")


@app.command("remove")
def remove_cmd(vm: str = typer.Argument(..., help="VM name."),
               tags: list[str] = typer.Argument(..., help="One or more tags."),
               uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """Remove tags from a VM (a tag it does not carry is fine)."""
    from kvmops.services import vm_tags

    uri = on_host(uri, host_name)
    now = vm_tags.remove(Caller.local(), uri, vm, tags)
    info(f"VM '{vm}' tags: {' '.join(now) or '(none)'}")


@app.command("list")
def list_cmd(vm: str | None = typer.Argument(None, help="One VM (default: every VM)."),
             tag: str | None = typer.Option(None, "--tag", help="Only VMs with this tag."),
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """VMs and their tags."""
    from kvmops.services import vm_tags

    uri = on_host(uri, host_name)
    found = vm_tags.list_tags(uri, vm)
    if tag is not None:
        found = {name: tags for name, tags in found.items() if tag in tags}
    if json_out:
        print_json(found)
        return
    print_table(["VM", "Tags"], [(name, " ".join(tags)) for name, tags in found.items()])

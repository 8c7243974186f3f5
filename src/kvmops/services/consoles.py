"""Console use cases: a running VM's serial console, for the terminal and the browser."""

from __future__ import annotations

from collections.abc import Callable

from kvmops.host.console import SerialConsole
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm.domxml import validate_name


@audited("vm.console", target="vm")
def open_serial(caller: Caller, uri: str | None, vm: str, on_data: Callable[[bytes], None],
                on_closed: Callable[[str | None], None], *, force: bool = False
                ) -> SerialConsole:
    """Attach to ``vm``'s serial console; ``on_data`` hears the guest, ``on_closed`` why
    it ended. ``force`` takes the console over from another session."""
    del caller  # a command's session is audited here, the browser's by its WebSocket bridge
    console = SerialConsole(uri, validate_name(vm), on_data, on_closed)
    console.open(force=force)
    return console

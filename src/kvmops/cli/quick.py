"""The quick commands: ``kvmops vm list``, ``vm info`` and ``guest exec``, the ones a
script calls in a loop, measured against virsh's (bench/cli_startup.py).

Their bodies live here and the Typer commands (kvmops.cli.vm, kvmops.cli.guest) call
them. In their plain forms -- only the options below, ``guest exec`` with its ``--`` --
:func:`quick_command` recognises them and :func:`kvmops.cli.main.run` runs them without
Typer or Click, whose import alone costs several times a whole ``virsh list``. Any other
command line (``--help``, ``--socket``, a typo, a missing value) goes to Typer, which
parses and reports it as always.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kvmops.cli.output import print_fields, print_json, print_table, warn
from kvmops.errors import StorageError, ValidationError
from kvmops.services.caller import Caller
from kvmops.sizes import format_size

if TYPE_CHECKING:
    from kvmops.services.vms import VmInfo

URI_ENV = "KVMOPS_URI"  # as UriOption's envvar (kvmops.cli.common)
ALL_HOSTS = "all"  # ``vm list --host all``


def host_uri(uri: str | None, host: str | None, *, connect_given: bool,
             local_only: str | None = None, all_ok: bool = False,
             option: str = "--host") -> str | None:
    """The libvirt URI a command opens: host ``host``'s of ``kvmops host list`` (``local``:
    the configured one), else ``uri`` (--connect or KVMOPS_URI; None: the configured).
    ``connect_given``: --connect was on the command line (KVMOPS_URI is a default that
    --host overrides); ``local_only``: an option naming a socket on this machine;
    ``option``: how the command spells --host."""
    if host is None:
        return uri
    if connect_given:
        raise ValidationError(f"{option} and --connect both name the host",
                              hint=f"give one of them: {option} NAME of 'kvmops host list', "
                                   "or --connect URI")
    if local_only:
        raise ValidationError(f"{option} cannot be used with {local_only} (a QEMU socket on "
                              "this machine)", hint="name the VM instead of the socket, or "
                                                    f"drop {option}")
    if host == ALL_HOSTS:
        if all_ok:
            return None
        raise ValidationError("--host all is for 'kvmops vm list' only",
                              hint="name one host of 'kvmops host list'")
    from kvmops.services.hosts import uri_of

    return uri_of(Caller.local(), host)


def vm_list(json_out: bool, uri: str | None, host: str | None = None) -> None:
    """``kvmops vm list``: the VMs at ``uri``; ``host`` is the --host name given (each
    VM's ``host``), ``all``: every host's VMs, asked at once."""
    from kvmops.services import vms
    from kvmops.services.session import connect

    if host == ALL_HOSTS:
        _vm_list_all(json_out)
        return
    with connect(uri) as conn:
        found = vms.list_vms(Caller.local(), conn)
    for vm in found:
        vm.host = host
    if json_out:
        print_json(found)
        return
    print_table(["Name", "State", "vCPUs", "Memory", "Accel", "Autostart"],
                [(vm.name, vm.state, vm.vcpus, format_size(vm.memory), vm.accelerator,
                  "yes" if vm.autostart else "no") for vm in found])


def _vm_list_all(json_out: bool) -> None:
    """``kvmops vm list --host all``: every host asked at once, each under a deadline (a
    remote host with one bulk statistics call: the API's list, services.fleet); a host
    that does not answer is one warning line and does not delay the others."""
    from kvmops.services import fleet, hosts

    found = fleet.list_all_vms(Caller.local(), hosts.LIST_DEADLINE_S)
    for gone in found.unreachable:
        warn(f"host '{gone.host}' is unreachable, its VMs are not listed: {gone.error}")
    if json_out:
        print_json(found.vms)
        return
    print_table(["Host", "Name", "State", "vCPUs", "Memory", "Accel", "Autostart"],
                [(vm.host, vm.name, vm.state, vm.vcpus, format_size(vm.memory),
                  vm.accelerator, "yes" if vm.autostart else "no") for vm in found.vms])


def vm_info(name: str, json_out: bool, uri: str | None) -> None:
    """``kvmops vm info NAME``."""
    from kvmops.services import vms
    from kvmops.services.session import connect

    with connect(uri) as host:
        vm = vms.info(Caller.local(), host, name)
    if json_out:
        print_json(vm)
    else:
        _print_info(vm)


def _print_info(vm: VmInfo) -> None:
    print_fields([
        ("Name", vm.name), ("UUID", vm.uuid), ("State", vm.state),
        ("vCPUs", vm.vcpus if not vm.topology else
         f"{vm.vcpus} ({vm.topology['sockets']} sockets x {vm.topology['cores']} cores x "
         f"{vm.topology['threads']} threads)"),
        ("Memory", format_size(vm.memory)), ("Accelerator", vm.accelerator),
        ("Guest agent", "answering" if vm.agent else
         ("configured, not answering" if vm.agent_configured else "not configured")),
        ("Autostart", "yes" if vm.autostart else "no"),
        ("Managed save", "yes" if vm.managed_save else "no"),
        ("Kernel", vm.kernel), ("VNC", vm.vnc),
        ("Tainted", ", ".join(vm.tainted) + " (expected after guest exec/agent commands)"
         if vm.tainted else None),
    ])
    if vm.disks:
        print_table(["Target", "Device", "Format", "Bus", "Source"],
                    [(d.target, d.device, d.format, d.bus, d.source) for d in vm.disks])
    if vm.nics:
        print_table(["Type", "Source", "Model", "MAC"],
                    [(n.type, n.source, n.model, n.mac) for n in vm.nics])


def guest_exec(args: Sequence[str], *, timeout: float, stdin: Path | None,
               socket: str | None, tcp: str | None, uri: str | None) -> int:
    """``kvmops guest exec [VM] -- CMD [ARGS]...``: the command's output becomes ours;
    returns its exit code (128 + signal when a signal ended it)."""
    from kvmops.services.guest import open_guest

    if socket or tcp:
        vm, argv = None, list(args)
    else:
        vm, argv = args[0], list(args[1:])
    if not argv:
        raise ValidationError("no command given", hint="use: kvmops guest exec VM -- CMD [ARGS]...")
    data: bytes | None = None
    if stdin is not None:
        try:
            data = sys.stdin.buffer.read() if str(stdin) == "-" else stdin.read_bytes()
        except OSError as err:
            raise StorageError(f"cannot read --stdin file '{stdin}': {err.strerror}") from err
    with open_guest(Caller.local(), vm, socket, tcp, uri) as guest:
        result = guest.exec(argv, stdin=data, timeout=timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    for stream, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut:
            warn(f"the command's {stream} was truncated by the guest agent (its capture limit)")
    if result.signal is not None and result.exit_code is None:
        return 128 + result.signal
    return result.exit_code or 0


# ------------------------------------------------------------------ the plain forms
def _options(words: Sequence[str], flags: set[str], values: set[str]
             ) -> tuple[list[str], dict[str, str | bool]] | None:
    """Positional words and options (``--opt VALUE``, ``--opt=VALUE``, flags); None for
    anything else (an unknown option, a value missing, ``--help``, a ``--``)."""
    positional: list[str] = []
    found: dict[str, str | bool] = {}
    rest = iter(words)
    for word in rest:
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, sep, value = word.partition("=")
        if name in flags and not sep:
            found[name] = True
        elif name in values:
            if not sep:
                value = next(rest, "")
                if not value or value.startswith("-"):
                    return None
            found[name] = value
        else:
            return None
    return positional, found


def _uri(found: dict[str, str | bool]) -> str | None:
    given = found.get("--connect", found.get("-c"))
    return str(given) if given else (os.environ.get(URI_ENV) or None)


def _target(found: dict[str, str | bool], all_ok: bool = False) -> str | None:
    """The URI of ``--host NAME`` (resolved when the command runs) or of ``_uri``."""
    host = found.get("--host")
    return host_uri(_uri(found), str(host) if host else None, all_ok=all_ok,
                    connect_given=bool(found.get("--connect", found.get("-c"))))


def _ran(command: Callable[..., None], *args: object) -> int:
    command(*args)
    return 0


def quick_command(args: Sequence[str]) -> Callable[[], int] | None:
    """The command line as a quick command ready to run, or None (then Typer runs it)."""
    if len(args) < 2:
        return None
    group, command, words = args[0], args[1], args[2:]
    uri_options = {"--connect", "-c", "--host"}
    if (group, command) == ("vm", "list"):
        parsed = _options(words, {"--json"}, uri_options)
        if parsed is None or parsed[0]:
            return None
        found = parsed[1]
        host = () if "--host" not in found else (str(found["--host"]),)
        return lambda: _ran(vm_list, bool(found.get("--json")), _target(found, True), *host)
    if (group, command) == ("vm", "info"):
        parsed = _options(words, {"--json"}, uri_options)
        if parsed is None or len(parsed[0]) != 1:
            return None
        (name,), found = parsed
        return lambda: _ran(vm_info, name, bool(found.get("--json")), _target(found))
    if (group, command) == ("guest", "exec") and "--" in words:
        split = words.index("--")
        parsed = _options(words[:split], set(), {*uri_options, "--timeout"})
        argv = list(words[split + 1:])
        if parsed is None or len(parsed[0]) != 1 or not argv:
            return None
        (vm,), found = parsed
        try:
            timeout = float(found.get("--timeout", 60.0))
        except ValueError:
            return None
        return lambda: guest_exec([vm, *argv], timeout=timeout, stdin=None, socket=None,
                                  tcp=None, uri=_target(found))
    return None

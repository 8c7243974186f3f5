"""``kvmops guest``: the guest agent of a VM, or of a hand-started QEMU (--socket/--tcp)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kvmops.cli import quick
from kvmops.cli.bench import app as bench_app
from kvmops.cli.common import HostOption, JsonOption, UriOption, on_host
from kvmops.cli.output import byte_progress, info, print_fields, print_json, print_table, warn
from kvmops.errors import StorageError, ValidationError
from kvmops.services.caller import Caller
from kvmops.services.guest import Guest, Progress, open_guest
from kvmops.sizes import format_size

if TYPE_CHECKING:
    from kvmops.services.guest import TransferResult

app = typer.Typer(help="Talk to the guest agent (qemu-ga) inside a VM.", no_args_is_help=True)
ssh_app = typer.Typer(help="Manage a guest user's SSH authorized keys.", no_args_is_help=True)
app.add_typer(ssh_app, name="ssh-key")
app.add_typer(bench_app, name="bench")

VmArg = typer.Argument(None, help="VM name (or use --socket/--tcp).", show_default=False)
SocketOption = typer.Option(None, "--socket", metavar="PATH",
                            help="qemu-ga unix socket of a hand-started QEMU instead of a VM.")
TcpOption = typer.Option(None, "--tcp", metavar="HOST:PORT",
                         help="qemu-ga TCP socket of a hand-started QEMU instead of a VM.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="guest")


@contextmanager
def _agent(vm: str | None, socket: str | None, tcp: str | None, uri: str | None
           ) -> Iterator[Guest]:
    with open_guest(Caller.local(), vm, socket, tcp, uri) as guest:
        yield guest


def _split_target(args: list[str], socket: str | None, tcp: str | None, rest: int,
                  usage: str) -> tuple[str | None, list[str]]:
    """Positional args are ``[VM] REST...``: the VM is absent with --socket/--tcp."""
    if socket or tcp:
        if len(args) != rest:
            raise ValidationError(f"usage: {usage} (no VM name with --socket/--tcp)")
        return None, args
    if len(args) != rest + 1:
        raise ValidationError(f"usage: {usage}")
    return args[0], args[1:]


@app.command("ping")
def ping_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
             tcp: str | None = TcpOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Check that the guest agent answers."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        ch.ping()
        info(f"guest agent of {ch.target} answers")


@app.command("info")
def info_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
             tcp: str | None = TcpOption, json_out: bool = JsonOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Agent version, supported and disabled commands."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.info()
    if json_out:
        print_json(result)
        return
    print_fields([("Version", result.version), ("Supported", " ".join(result.supported)),
                  ("Disabled", " ".join(result.disabled) or "none")])


@app.command("osinfo")
def osinfo_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
               tcp: str | None = TcpOption, json_out: bool = JsonOption,
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Guest operating system (os-release and uname)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.osinfo()
    if json_out:
        print_json(result)
        return
    print_fields([(k.replace("_", " ").capitalize(), v) for k, v in result.model_dump().items()
                  if v is not None])


@app.command("hostname")
def hostname_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
                 tcp: str | None = TcpOption, json_out: bool = JsonOption,
                 uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """The guest's host name."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        name = ch.hostname()
    if json_out:
        print_json({"hostname": name})
    else:
        sys.stdout.write(name + "\n")


@app.command("ip")
def ip_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
           tcp: str | None = TcpOption, json_out: bool = JsonOption,
           uri: str | None = UriOption,
           host_name: str | None = HostOption) -> None:
    """Network interfaces and their addresses: the guest agent's and, for a VM, the DHCP
    leases of its libvirt networks (each address says which: agent or lease)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    from kvmops.errors import GuestAgentError
    from kvmops.services import nics

    if vm is None or socket or tcp:
        with _agent(vm, socket, tcp, uri) as ch:
            result = nics.agent_interfaces(ch.interfaces())
    else:
        answer = None
        try:
            with _agent(vm, socket, tcp, uri) as ch:
                answer = ch.interfaces()
        except GuestAgentError as err:
            warn(f"{err}; showing the DHCP leases only")
        from kvmops.cli.common import connect

        with connect(uri) as host:
            result = nics.guest_addresses(Caller.local(), host, vm, answer)
    if json_out:
        print_json(result)
        return
    print_table(["Interface", "MAC", "Addresses"],
                [(i.name or "-", i.mac or "-",
                  " ".join(f"{a.address}/{a.prefix}" + (" (lease)" if a.source == "lease" else "")
                           for a in i.addresses))
                 for i in result])


@app.command("users")
def users_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
              tcp: str | None = TcpOption, json_out: bool = JsonOption,
              uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """Users logged in to the guest."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.users()
    if json_out:
        print_json(result)
        return
    print_table(["User", "Login time"],
                [(u.user, datetime.fromtimestamp(u.login_time).isoformat(timespec="seconds"))
                 for u in result])


@app.command("fsinfo")
def fsinfo_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
               tcp: str | None = TcpOption, json_out: bool = JsonOption,
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Mounted file systems of the guest."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.fsinfo()
    if json_out:
        print_json(result)
        return
    print_table(["Mount point", "Type", "Device", "Used", "Size", "Disks"],
                [(f.mountpoint, f.type, f.name,
                  format_size(f.used_bytes) if f.used_bytes is not None else "",
                  format_size(f.total_bytes) if f.total_bytes is not None else "",
                  " ".join(f.disks)) for f in result])


@app.command("time")
def time_cmd(vm: str | None = VmArg,
             set_to: str | None = typer.Option(None, "--set", metavar="ISO",
                                               help="Set the guest clock, e.g. "
                                                    "2024-05-01T12:00:00Z."),
             sync: bool = typer.Option(False, "--sync", help="Set the guest clock from the host."),
             socket: str | None = SocketOption, tcp: str | None = TcpOption,
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Show the guest clock, or set it (--set ISO | --sync)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    if set_to and sync:
        raise ValidationError("give --set or --sync, not both")
    when = None
    if set_to:
        try:
            when = datetime.fromisoformat(set_to.replace("Z", "+00:00"))
        except ValueError as err:
            raise ValidationError(f"invalid time '{set_to}'",
                                  hint="use ISO 8601, e.g. 2024-05-01T12:00:00Z") from err
    with _agent(vm, socket, tcp, uri) as ch:
        if when is not None:
            result = ch.set_time(when)
        elif sync:
            result = ch.sync_time()
        else:
            result = ch.get_time()
    if json_out:
        print_json(result)
    else:
        info(f"{result.iso} (guest - host: {result.offset_seconds:+.3f} s)")


@app.command("vcpus")
def vcpus_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
              tcp: str | None = TcpOption, json_out: bool = JsonOption,
              uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """The guest's logical CPUs."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.vcpus()
    if json_out:
        print_json(result)
        return
    print_table(["CPU", "Online", "Can offline"],
                [(v.logical_id, "yes" if v.online else "no",
                  "" if v.can_offline is None else ("yes" if v.can_offline else "no"))
                 for v in result])


@app.command("exec")
def exec_cmd(args: list[str] = typer.Argument(..., metavar="[VM] -- CMD [ARGS]...",
                                              show_default=False),
             timeout: float = typer.Option(60.0, "--timeout",
                                           help="Seconds to wait for the command."),
             stdin: Path | None = typer.Option(None, "--stdin", metavar="FILE",
                                               help="Feed this file to the command's stdin "
                                                    "('-' for our stdin)."),
             socket: str | None = SocketOption, tcp: str | None = TcpOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Run a command in the guest: its stdout, stderr and exit code become ours."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    raise typer.Exit(quick.guest_exec(args, timeout=timeout, stdin=stdin, socket=socket,
                                      tcp=tcp, uri=uri))


def _transfer(what: str, run: Callable[[Progress], TransferResult]
              ) -> TransferResult:
    with byte_progress(transient=True) as bar:
        task = bar.add_task(what, total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        return run(progress)


@app.command("push")
def push_cmd(args: list[str] = typer.Argument(..., metavar="[VM] LOCAL REMOTE",
                                              show_default=False),
             mode: str | None = typer.Option(None, "--mode", help="File mode, e.g. 0600."),
             owner: str | None = typer.Option(None, "--owner", help="USER or USER:GROUP."),
             socket: str | None = SocketOption, tcp: str | None = TcpOption,
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Copy a local file into the guest (verified, then renamed into place)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    vm, (local, remote) = _split_target(args, socket, tcp, 2,
                                        "kvmops guest push VM LOCAL REMOTE")
    with _agent(vm, socket, tcp, uri) as ch:
        result = _transfer(f"push {Path(local).name}", lambda p: ch.push(
            Path(local), remote, mode=mode, owner=owner, progress=p))
    if json_out:
        print_json(result)
        return
    info(f"pushed {format_size(result.size)} to {result.destination} on {ch.target}"
         + (f" ({result.checksum})" if result.checksum else ""))
    if result.note:
        warn(result.note)


@app.command("pull")
def pull_cmd(args: list[str] = typer.Argument(..., metavar="[VM] REMOTE LOCAL",
                                              show_default=False),
             socket: str | None = SocketOption, tcp: str | None = TcpOption,
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Copy a file out of the guest (written to a temporary file, fsync'd, renamed)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    vm, (remote, local) = _split_target(args, socket, tcp, 2,
                                        "kvmops guest pull VM REMOTE LOCAL")
    with _agent(vm, socket, tcp, uri) as ch:
        result = _transfer(f"pull {Path(remote).name}", lambda p: ch.pull(
            remote, Path(local), progress=p))
    if json_out:
        print_json(result)
        return
    info(f"pulled {format_size(result.size)} from {remote} to {result.destination}")


UserOption = typer.Option(..., "--user", "-u", help="Guest user.")


def _key_args(keys: list[str], key_file: Path | None) -> list[str]:
    collected = list(keys)
    if key_file is not None:
        try:
            text = key_file.read_text()
        except OSError as err:
            raise StorageError(f"cannot read key file '{key_file}': {err.strerror}") from err
        collected += [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not collected:
        raise ValidationError("no SSH key given", hint="pass KEY arguments or --file FILE.pub")
    return collected


def _ssh_target(args: list[str], socket: str | None, tcp: str | None) -> tuple[str | None,
                                                                             list[str]]:
    if socket or tcp:
        return None, args
    if not args:
        raise ValidationError("usage: kvmops guest ssh-key add|remove VM --user U KEY...")
    return args[0], args[1:]


def _change_keys(change: Callable[[Guest, str, Sequence[str]], list[str]],
                 args: list[str] | None, user: str, key_file: Path | None,
                 socket: str | None, tcp: str | None, uri: str | None) -> None:
    vm, keys = _ssh_target(args or [], socket, tcp)
    wanted = _key_args(keys, key_file)
    with _agent(vm, socket, tcp, uri) as ch:
        result = change(ch, user, wanted)
    info(f"{user} on {ch.target} has {len(result)} authorized key(s)")


@ssh_app.command("add")
def ssh_add_cmd(args: list[str] = typer.Argument(None, metavar="[VM] [KEY]...",
                                                 show_default=False),
                user: str = UserOption,
                key_file: Path | None = typer.Option(None, "--file", "-f",
                                                     help="Read keys from this file."),
                socket: str | None = SocketOption, tcp: str | None = TcpOption,
                uri: str | None = UriOption,
                host_name: str | None = HostOption) -> None:
    """Add keys to ~USER/.ssh/authorized_keys (a key already there is not duplicated)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    _change_keys(Guest.ssh_key_add, args, user, key_file, socket, tcp, uri)


@ssh_app.command("remove")
def ssh_remove_cmd(args: list[str] = typer.Argument(None, metavar="[VM] [KEY]...",
                                                    show_default=False),
                   user: str = UserOption,
                   key_file: Path | None = typer.Option(None, "--file", "-f",
                                                        help="Read keys from this file."),
                   socket: str | None = SocketOption, tcp: str | None = TcpOption,
                   uri: str | None = UriOption,
                   host_name: str | None = HostOption) -> None:
    """Remove keys from ~USER/.ssh/authorized_keys (other keys are kept)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    _change_keys(Guest.ssh_key_remove, args, user, key_file, socket, tcp, uri)


@ssh_app.command("list")
def ssh_list_cmd(vm: str | None = VmArg, user: str = UserOption,
                 socket: str | None = SocketOption, tcp: str | None = TcpOption,
                 json_out: bool = JsonOption, uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """The authorized keys of a guest user."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        keys = ch.ssh_key_list(user)
    if json_out:
        print_json(keys)
    else:
        for key in keys:
            sys.stdout.write(key + "\n")


@app.command("password")
def password_cmd(vm: str | None = VmArg, user: str = UserOption,
                 password_stdin: bool = typer.Option(False, "--password-stdin",
                                                     help="Read the password from stdin."),
                 crypted: bool = typer.Option(False, "--crypted",
                                              help="The password is already a crypt(3) hash."),
                 socket: str | None = SocketOption, tcp: str | None = TcpOption,
                 uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """Set a guest user's password (prompted twice, hidden, unless --password-stdin)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"New password for {user}", hide_input=True,
                                confirmation_prompt=True, err=True)
    with _agent(vm, socket, tcp, uri) as ch:
        ch.set_password(user, password, crypted=crypted)
    info(f"password of {user} set on {ch.target}")


@app.command("fsfreeze")
def fsfreeze_cmd(vm: str | None = VmArg,
                 mountpoint: list[str] = typer.Option([], "--mountpoint",
                                                      help="Freeze only this; repeatable."),
                 socket: str | None = SocketOption, tcp: str | None = TcpOption,
                 uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """Freeze the guest's file systems (for a consistent snapshot)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        count = ch.fsfreeze(mountpoint or None)
    info(f"{count} file system(s) frozen on {ch.target}")


@app.command("fsthaw")
def fsthaw_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
               tcp: str | None = TcpOption, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Thaw the guest's frozen file systems."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        count = ch.fsthaw()
    info(f"{count} file system(s) thawed on {ch.target}")


@app.command("fsstatus")
def fsstatus_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
                 tcp: str | None = TcpOption, json_out: bool = JsonOption,
                 uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """Whether the guest's file systems are frozen or thawed."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        status = ch.fsstatus()
    if json_out:
        print_json({"status": status})
    else:
        sys.stdout.write(status + "\n")


@app.command("fstrim")
def fstrim_cmd(vm: str | None = VmArg,
               minimum: int | None = typer.Option(None, "--minimum",
                                                  help="Minimum free range to discard (bytes)."),
               socket: str | None = SocketOption, tcp: str | None = TcpOption,
               json_out: bool = JsonOption, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Discard unused blocks of the guest's file systems."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        result = ch.fstrim(minimum)
    if json_out:
        print_json(result)
        return
    print_table(["Path", "Trimmed", "Error"],
                [(r.path, format_size(r.trimmed) if r.trimmed is not None else "", r.error)
                 for r in result])


@app.command("shutdown")
def shutdown_cmd(vm: str | None = VmArg,
                 halt: bool = typer.Option(False, "--halt", help="Halt instead of power off."),
                 socket: str | None = SocketOption, tcp: str | None = TcpOption,
                 uri: str | None = UriOption,
                 host_name: str | None = HostOption) -> None:
    """Ask the guest agent to power the guest off (returns once the request is sent)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        ch.shutdown("halt" if halt else "powerdown")
    info(f"shutdown requested through the guest agent of {ch.target}")


@app.command("reboot")
def reboot_cmd(vm: str | None = VmArg, socket: str | None = SocketOption,
               tcp: str | None = TcpOption, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Ask the guest agent to reboot the guest."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    with _agent(vm, socket, tcp, uri) as ch:
        ch.reboot()
    info(f"reboot requested through the guest agent of {ch.target}")

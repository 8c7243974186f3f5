"""Host bridge over an uplink that never cuts the host off (``net create br0 --mode bridge
--uplink eth0``), and its rollback (``net rollback br0``).

The way ``netplan try`` does it: find the route the caller's session uses (the SSH
client's address, else ``--verify HOST``, else the uplink's default gateway), write the
uplink's state to a rollback record in the state directory (atomically, before anything
changes), apply the plan of :mod:`kvmops.network.uplink`, check that the session's next
hop still answers through the bridge (its ARP/NDP entry becomes REACHABLE, bounded), and
optionally wait for the operator to confirm. Any failure, Ctrl-C, SIGTERM or SIGHUP (the
SSH session dropped) restores the exact prior state of the uplink and removes the bridge.
A crash or SIGKILL leaves the record: ``kvmops net rollback BRIDGE`` restores from it.
The libvirt network (``forward mode='bridge'``) is defined only after the check passed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from kvmops.config import settings
from kvmops.errors import (
    AlreadyExistsError,
    CancelledError,
    KvmopsError,
    NotFoundError,
    StateError,
    ValidationError,
)
from kvmops.host import bridges as kernel
from kvmops.network.model import NetworkSpec, check_ifname
from kvmops.network.uplink import (
    BridgeSnapshot,
    Step,
    Target,
    UplinkSnapshot,
    check_bridge_removal,
    check_host,
    check_uplink,
    describe,
    differences,
    plan_create,
    plan_rebridge,
    plan_rollback,
    plan_unbridge,
    session_client,
)
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

P = ParamSpec("P")
R = TypeVar("R")
DEFAULT_VERIFY_TIMEOUT = 10.0
RECORD_VERSION = 1
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class BridgeResult:
    """What ``net create --uplink`` did (or, with ``dry_run``, would do)."""

    name: str
    bridge: str
    uplink: str
    plan: list[str]
    verify_target: str | None
    verify_source: str
    next_hop: str | None
    dry_run: bool = False
    applied: bool = False
    verified: bool = False
    confirmed: bool | None = None
    defined: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class UnbridgeResult:
    """What ``net unbridge`` did (or, with ``dry_run``, would do)."""

    bridge: str
    port: str
    plan: list[str]
    verify_target: str | None
    verify_source: str
    next_hop: str | None
    dry_run: bool = False
    applied: bool = False
    verified: bool = False
    confirmed: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RollbackResult:
    bridge: str
    uplink: str | None
    restored: bool
    stale: bool = False
    steps: list[str] = field(default_factory=list)
    kind: str = "create"  # the change undone: "create" (--uplink) or "unbridge"


class _Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP while the change is applied: treated like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------ rollback record
def record_dir() -> Path:
    return settings().state_dir / "bridges"


def record_path(bridge: str) -> Path:
    return record_dir() / f"{check_ifname(bridge, 'bridge name')}.json"


def _write_record(path: Path, data: dict[str, Any]) -> None:
    """Atomically, and on disk before the first change (a crash right after must find it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_record(bridge: str) -> dict[str, Any] | None:
    path = record_path(bridge)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StateError(f"rollback record {path} cannot be read: {err}",
                         hint="restore the uplink by hand (see the record), then remove "
                              "it") from None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        raise StateError(f"rollback record {path} is not one this kvmops wrote",
                         hint="restore the uplink by hand, then remove the record")
    return data


def pending() -> list[str]:
    """Bridges with a rollback record left by a change that did not finish (a crash)."""
    directory = record_dir()
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One bridge change (or rollback) at a time on this host: two over the same uplink
    would each snapshot the other's half-done state."""
    import fcntl

    directory = record_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError("another 'kvmops net create --uplink' or 'net rollback' is "
                             "running on this host",
                             hint="wait for it to finish, then run this again") from None
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ signals
@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], Any] | int) -> Iterator[None]:
    """SIGTERM/SIGHUP handled by ``handler`` for the block (main thread only: elsewhere
    signals cannot be caught, and the caller's own handling stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(signum)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """A restore runs to its end: SIGTERM/SIGHUP/SIGINT are ignored meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (*_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


# --------------------------------------------------------------------------- guard
def _start_guard(path: Path) -> tuple[int, int]:
    """Start the guard: a process of its own session that waits on a pipe from this one
    and, when this process ends with the rollback record still there (SIGKILL, an OOM
    kill, a crash between two steps), restores from it. Returns (our end of the pipe:
    close it when done, the guard's pid). Its output goes to ``BRIDGE.guard.log`` beside
    the record."""
    import subprocess
    import sys

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    try:
        with open(path.with_suffix(".guard.log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvmops.services.bridges", "--guard", str(path),
                 str(read_fd)], pass_fds=(read_fd,), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return write_fd, proc.pid


def _guard(path: Path, fd: int) -> int:
    """The guard's body (``python -m kvmops.services.bridges --guard RECORD FD``)."""
    for sig in (signal.SIGHUP, signal.SIGINT):  # the terminal going away is no reason
        signal.signal(sig, signal.SIG_IGN)
    while os.read(fd, 64):
        pass  # nothing is ever written: EOF when the creating process is gone
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"kvmops guard: cannot read {path}: {err}", flush=True)
        return 1
    pid = int(data.get("pid") or 0)
    deadline = time.monotonic() + 30
    while pid and kernel.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # closed its end but still exiting: let it finish its own restore
    if not path.exists():
        return 0
    with _uninterruptible():
        steps, left = _restore(data)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if left:
        print(f"{stamp} kvmops guard: restored {data.get('uplink')} from {path} with "
              f"differences left: {'; '.join(left)}", flush=True)
        return 1
    path.unlink(missing_ok=True)
    print(f"{stamp} kvmops guard: process {pid} ended before finishing bridge "
          f"'{data.get('bridge')}': restored {data.get('uplink')} ({len(steps)} steps)",
          flush=True)
    return 0


# -------------------------------------------------------------------------- target
def _default_gateway(snapshot: UplinkSnapshot) -> str | None:
    gateways = [r for r in snapshot.movable_routes
                if r.dst == "default" and r.gateway and r.table == "main"]
    gateways.sort(key=lambda r: (r.family != "inet", r.metric or 0))
    return gateways[0].gateway if gateways else None


def find_target(snapshot: UplinkSnapshot, verify: str | None, env: dict[str, str],
                client: str | None = None) -> Target:
    """The host whose reachability the change must keep, and the next hop to it.
    ``client``: the address of an API client the change runs for (it replaces the SSH
    session of ``env``: the server's environment says nothing about the caller)."""
    uplink = snapshot.link.name
    notes: list[str] = []
    if verify is not None:
        address = check_host(verify)
        route = kernel.route_get(address)
        if route is None:
            raise ValidationError(f"--verify {address}: this host has no route to it",
                                  hint=f"name a host reached through {uplink}")
        if route.get("dev") != uplink:
            raise ValidationError(
                f"--verify {address} is reached through {route.get('dev')}, not {uplink}: "
                "its answer would prove nothing about the change",
                hint=f"name a host reached through {uplink} (e.g. its gateway)")
        return Target(address, "--verify", route.get("gateway") or address, True, notes)
    source, whose = ("api client", "this API client") if client is not None else (
        "ssh session", "this SSH session's client")
    client = client if client is not None else session_client(env)
    if client is not None:
        route = kernel.route_get(client)
        if route is not None and route.get("dev") == uplink:
            return Target(client, source, route.get("gateway") or client, True, notes)
        notes.append(f"{whose} {client} is reached through "
                     f"{(route or {}).get('dev', 'no route')}, not {uplink}: the change does "
                     "not carry it")
    gateway = _default_gateway(snapshot)
    if gateway is not None:
        return Target(gateway, "default gateway", gateway, True, notes)
    notes.append(f"no session, --verify host or default gateway is reached through "
                 f"{uplink}: nothing to check after the change (use --verify HOST)")
    return Target(None, "none", None, False, notes)


def _check(target: Target, bridge: str, timeout: float) -> str | None:
    """Why the change lost the target (None: it did not)."""
    if target.address is None:
        return None
    route = kernel.route_get(target.address)
    dev = (route or {}).get("dev")
    if dev != bridge:
        return (f"{target.address} is no longer routed through {bridge} "
                f"({'no route' if route is None else 'through ' + str(dev)})")
    hop = str((route or {}).get("gateway") or target.address)
    if not kernel.answers(hop, bridge, timeout):
        return (f"next hop {hop} did not answer ARP/NDP through {bridge} within "
                f"{timeout:g} s")
    return None


# ------------------------------------------------------------------------ restore
def _run_all(steps: list[Step]) -> list[str]:
    """Every step, even after one fails; the failures' messages."""
    failed = []
    for step in steps:
        try:
            kernel.run(step)
        except KvmopsError as err:
            failed.append(err.message)
    return failed


def _restore(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Bring the host back to the record's snapshot: (the steps run, what still differs
    afterwards). Every step is tried even if one fails."""
    if record.get("kind") == "unbridge":
        return _restore_bridge(record)
    return _restore_uplink(record)


def _restore_bridge(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Undo a bridge removal: the bridge again, over its port, with its addresses and
    routes; the port without the addresses it was given."""
    before = BridgeSnapshot.from_dict(record["snapshot"])
    bridge, port = before.bridge.link.name, before.port.link.name
    if not kernel.exists(port):
        return [], [f"port {port} is gone"]
    bridge_now = kernel.snapshot(bridge) if kernel.exists(bridge) else None
    steps = plan_rebridge(before, bridge_now, kernel.snapshot(port),
                          elapsed=max(0.0, time.time() - before.bridge.taken_at))
    failed = _run_all(steps)
    if not kernel.exists(bridge):
        return [str(s) for s in steps], [f"bridge {bridge} is not back", *failed]
    left = [f"{bridge}: {d}" for d in differences(before.bridge, kernel.snapshot(bridge))]
    left += [f"{port}: {d}" for d in differences(before.port, kernel.snapshot(port))]
    return [str(s) for s in steps], left + (failed if left else [])


def _restore_uplink(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Undo a bridge creation: the uplink as it was, the bridge gone."""
    before = UplinkSnapshot.from_dict(record["snapshot"])
    bridge = str(record["bridge"])
    uplink = before.link.name
    current = kernel.snapshot(uplink) if kernel.exists(uplink) else None
    steps = plan_rollback(before, current, bridge, bridge_present=kernel.exists(bridge),
                          elapsed=max(0.0, time.time() - before.taken_at))
    failed = _run_all(steps)
    if not kernel.exists(uplink):
        return [str(s) for s in steps], [f"uplink {uplink} is gone", *failed]
    left = differences(before, kernel.snapshot(uplink))
    if kernel.exists(bridge):
        left.append(f"bridge {bridge} still exists")
    return [str(s) for s in steps], left + (failed if left else [])


def _restore_or_explain(record: dict[str, Any], path: Path) -> list[str]:
    """Restore; the record goes when nothing differs any more, else it stays for
    ``net rollback`` and the differences are returned."""
    with _uninterruptible():
        _steps, left = _restore(record)
    if not left:
        path.unlink(missing_ok=True)
    return left


def _owner_running(pid: int) -> bool:
    """Is ``pid`` a live kvmops process (not a reused pid)?"""
    if pid == os.getpid() or not kernel.process_alive(pid):
        return False
    try:
        return b"kvmops" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# ------------------------------------------------------------------------ use cases
def _audited_unless_dry_run(action: str, target: str
                            ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Audited like every change, except a ``dry_run=True`` call: it changes nothing, and
    a row saying ``net create`` succeeded would mislead."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        with_audit = audited(action, target=target)(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return (fn if kwargs.get("dry_run") else with_audit)(*args, **kwargs)

        return wrapper

    return decorate


def _check_options(verify_timeout: float, confirm_timeout: float | None, dry_run: bool,
                   doing: str) -> None:
    if not 0 < verify_timeout <= 300:
        raise ValidationError(f"--verify-timeout {verify_timeout:g} is out of range",
                              hint="give 1 to 300 seconds")
    if confirm_timeout is not None and not 0 < confirm_timeout <= 3600:
        raise ValidationError(f"--confirm-timeout {confirm_timeout:g} is out of range",
                              hint="give 1 to 3600 seconds")
    if not dry_run and os.geteuid() != 0:
        raise StateError(f"{doing} needs root (CAP_NET_ADMIN)",
                         hint="run it as root (sudo kvmops ...); --dry-run shows the plan "
                              "as any user")


def _free_record_path(bridge: str) -> Path:
    """The record path of a new change of ``bridge``: refused while an old one is left."""
    path = record_path(bridge)
    if path.exists():
        raise StateError(f"a rollback record of bridge '{bridge}' is left from a change "
                         "that did not finish", actual="rollback pending",
                         hint=f"restore it first: 'kvmops net rollback {bridge}'")
    return path


@_audited_unless_dry_run("net.create", target="name")
def create_over_uplink(
    caller: Caller, name: str, uplink: str, *, bridge: str | None = None,
    verify: str | None = None, verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    confirm_timeout: float | None = None, confirm: Callable[[float], bool] | None = None,
    dry_run: bool = False, host: Any = None, autostart: bool = False,
    report: Callable[[str], None] = lambda _line: None, env: dict[str, str] | None = None,
    client: str | None = None,
) -> BridgeResult:
    """Create bridge ``bridge`` (default ``name``) over ``uplink`` without losing the
    host: see the module's doc. ``host`` (a libvirt connection) defines libvirt network
    ``name`` on the bridge afterwards; None leaves libvirt alone. ``confirm(seconds)``
    asks the operator (True: keep); with ``confirm_timeout`` and no answer in time the
    change is rolled back."""
    bridge = bridge or name
    spec = NetworkSpec(name=name, mode="bridge", bridge=bridge, autostart=autostart)
    check_ifname(uplink, "uplink")
    _check_options(verify_timeout, confirm_timeout, dry_run,
                   "creating a host bridge over an uplink")
    with contextlib.nullcontext() if dry_run else _exclusive():
        path = _free_record_path(bridge)
        if host is not None:
            from kvmops.host import networks as host_networks

            if host_networks.exists(host, name):
                raise AlreadyExistsError(f"network '{name}' already exists",
                                         hint="choose another name, or delete it first "
                                              "('kvmops net delete NAME')")
        check_uplink(kernel.link(uplink), uplink, bridge, bridge_exists=kernel.exists(bridge))
        before = kernel.snapshot(uplink)
        target = find_target(before, verify, dict(os.environ) if env is None else env,
                             client)
        steps = plan_create(before, bridge)
        result = BridgeResult(name=name, bridge=bridge, uplink=uplink,
                              plan=[str(s) for s in steps], verify_target=target.address,
                              verify_source=target.source, next_hop=target.next_hop,
                              dry_run=dry_run, notes=list(target.notes))
        _report_plan(report, describe(before), target, bridge, verify_timeout, steps)
        if dry_run:
            return result
        change = _Change(what=f"bridge '{bridge}' over '{uplink}'",
                         check_what=f"check of bridge '{bridge}'", check_dev=bridge,
                         as_before=f"{uplink} is as before", bridge=bridge)
        _run_change(change, result, steps, target, path,
                    {"kind": "create", "uplink": uplink, "name": name,
                     "snapshot": before.to_dict()},
                    verify_timeout, confirm_timeout, confirm, report)
        if host is not None:
            _define(caller, host, spec, result)
        return result


@dataclass(frozen=True)
class _Change:
    """How the messages of one change name it, and the link the check must go through."""

    what: str  # "bridge 'br0' over 'eth0'"
    check_what: str  # "check of bridge 'br0'"
    check_dev: str
    as_before: str  # "eth0 is as before"
    bridge: str


def _run_change(change: _Change, result: BridgeResult | UnbridgeResult, steps: list[Step],
                target: Target, path: Path, data: dict[str, Any], verify_timeout: float,
                confirm_timeout: float | None, confirm: Callable[[float], bool] | None,
                report: Callable[[str], None]) -> None:
    """Start the guard, write the rollback record (``data``: what restores), apply."""
    guard_fd, guard_pid = _start_guard(path)
    try:
        _write_record(path, {
            "version": RECORD_VERSION, "bridge": change.bridge, "pid": os.getpid(),
            "guard_pid": guard_pid, "netns": kernel.netns_id(), "boot_id": kernel.boot_id(),
            "created": time.time(), **data})
        record = _read_record(change.bridge)
        assert record is not None
        _apply(change, result, steps, target, record, path, verify_timeout, confirm_timeout,
               confirm, report)
    finally:
        os.close(guard_fd)  # the guard wakes up, finds no record (or restores from it)


def _apply(change: _Change, result: BridgeResult | UnbridgeResult, steps: list[Step],
           target: Target, record: dict[str, Any], path: Path, verify_timeout: float,
           confirm_timeout: float | None, confirm: Callable[[float], bool] | None,
           report: Callable[[str], None]) -> None:
    """Apply, check, confirm; restore on any failure or interruption."""
    bridge = change.bridge
    reason: str | None = None
    hint = ("check the uplink's cabling and switch port, or name a host that answers with "
            "--verify HOST")
    try:
        with _signals(_raise_interrupted):
            for step in steps:
                kernel.run(step)
            result.applied = True
            reason = _check(target, change.check_dev, verify_timeout)
            if reason is None:
                result.verified = True
                if target.address is not None:
                    report(f"check passed: {target.next_hop} answers through "
                           f"{change.check_dev}")
                if confirm_timeout is not None:
                    result.confirmed = bool(confirm and confirm(confirm_timeout))
                    if not result.confirmed:
                        reason = (f"not confirmed within {confirm_timeout:g} s (or no "
                                  "terminal to confirm on)")
                        hint = "answer the prompt with Enter in time, from a terminal"
    except BaseException as err:
        left = _restore_or_explain(record, path)
        cause = (f"interrupted ({err.args[0] if isinstance(err, _Interrupted) else 'SIGINT'})"
                 if isinstance(err, KeyboardInterrupt) else
                 err.message if isinstance(err, KvmopsError) else f"{type(err).__name__}: {err}")
        if left:
            raise StateError(f"{change.what} failed ({cause}) and the rollback left "
                             f"differences: {'; '.join(left)}",
                             hint=f"retry with 'kvmops net rollback {bridge}'") from err
        if isinstance(err, KeyboardInterrupt):
            raise CancelledError(f"{change.what}: {cause}; rolled back, {change.as_before}",
                                 hint="run the command again when ready") from None
        if isinstance(err, KvmopsError):
            raise StateError(f"{change.what} failed: {cause}; rolled back, "
                             f"{change.as_before}", hint=err.hint) from err
        raise
    if reason is not None:
        left = _restore_or_explain(record, path)
        if left:
            raise StateError(f"{change.check_what} failed ({reason}) and the rollback left "
                             f"differences: {'; '.join(left)}",
                             hint=f"retry with 'kvmops net rollback {bridge}'")
        raise StateError(f"{change.check_what} failed: {reason}; rolled back, "
                         f"{change.as_before}", hint=hint)
    path.unlink(missing_ok=True)


def _define(caller: Caller, host: Any, spec: NetworkSpec, result: BridgeResult) -> None:
    from kvmops.services import networks

    try:
        networks.create(caller, host, spec, start=True)
    except KvmopsError as err:
        raise StateError(f"bridge '{result.bridge}' over '{result.uplink}' works (checked), "
                         f"but libvirt network '{spec.name}' was not defined: {err.message}",
                         hint=f"define it: 'kvmops net create {spec.name} --mode bridge "
                              f"--bridge {result.bridge}'") from err
    result.defined = True


@_audited_unless_dry_run("net.unbridge", target="bridge")
def remove_bridge(
    caller: Caller, bridge: str, *, verify: str | None = None,
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT, confirm_timeout: float | None = None,
    confirm: Callable[[float], bool] | None = None, dry_run: bool = False, host: Any = None,
    report: Callable[[str], None] = lambda _line: None, env: dict[str, str] | None = None,
    client: str | None = None,
) -> UnbridgeResult:
    """The inverse of :func:`create_over_uplink`: the bridge's addresses and routes back
    onto its one port (the uplink), the bridge removed; checked, confirmed and rolled back
    (the bridge made again as it was) the same way. Refused while VMs or other links are
    ports of it, or (``host`` given) while a libvirt network names it."""
    check_ifname(bridge, "bridge name")
    _check_options(verify_timeout, confirm_timeout, dry_run, "removing a host bridge")
    with contextlib.nullcontext() if dry_run else _exclusive():
        path = _free_record_path(bridge)
        link = kernel.link(bridge)
        port = check_bridge_removal(link, bridge, kernel.ports(bridge) if link else [])
        if host is not None:
            from kvmops.services import networks

            users = [n.name for n in networks.list_networks(caller, host)
                     if n.mode == "bridge" and n.bridge == bridge]
            if users:
                raise StateError(f"libvirt network(s) {', '.join(users)} use bridge "
                                 f"'{bridge}'", hint="delete them first ('kvmops net delete "
                                                     "NAME': it names the VMs using them)")
        snap = BridgeSnapshot(bridge=kernel.snapshot(bridge), port=kernel.snapshot(port),
                              options=kernel.bridge_options(bridge))
        target = find_target(snap.bridge, verify, dict(os.environ) if env is None else env,
                             client)
        steps = plan_unbridge(snap)
        result = UnbridgeResult(bridge=bridge, port=port, plan=[str(s) for s in steps],
                                verify_target=target.address, verify_source=target.source,
                                next_hop=target.next_hop, dry_run=dry_run,
                                notes=list(target.notes))
        _report_plan(report, describe(snap.bridge), target, port, verify_timeout, steps)
        if dry_run:
            return result
        change = _Change(what=f"removing bridge '{bridge}' (back to '{port}')",
                         check_what=f"check after removing bridge '{bridge}'", check_dev=port,
                         as_before=f"{bridge} and {port} are as before", bridge=bridge)
        _run_change(change, result, steps, target, path,
                    {"kind": "unbridge", "uplink": port, "snapshot": snap.to_dict()},
                    verify_timeout, confirm_timeout, confirm, report)
    return result


@dataclass
class HostInterface:
    """A link of the host, and whether it can be the uplink of a new bridge."""

    name: str
    kind: str | None
    mac: str
    mtu: int
    up: bool
    master: str | None
    addresses: list[str]
    uplink_ok: bool
    why_not: str | None = None


def host_interfaces(caller: Caller) -> list[HostInterface]:
    """The host's links (loopback left out), for choosing an uplink (the web form)."""
    from kvmops.network.uplink import parse_link

    found = []
    for data in kernel.ip("-details", "addr", "show", json_out=True) or []:
        link = parse_link(data)
        if link.link_type == "loopback":
            continue
        why = None
        try:
            check_uplink(link, link.name, "", bridge_exists=False)
        except KvmopsError as err:
            why = err.message
        found.append(HostInterface(
            name=link.name, kind=link.kind, mac=link.mac, mtu=link.mtu, up=link.up,
            master=link.master, uplink_ok=why is None, why_not=why,
            addresses=[f"{a.get('local')}/{a.get('prefixlen')}"
                       for a in data.get("addr_info") or [] if a.get("local")]))
    return found


@dataclass
class PendingRecord:
    bridge: str
    uplink: str | None
    kind: str
    created: float | None
    pid: int | None


def pending_records(caller: Caller) -> list[PendingRecord]:
    """The rollback records left by changes that did not finish, with what they undo
    (an unreadable one is listed with kind 'unreadable')."""
    found = []
    for bridge in pending():
        try:
            data = _read_record(bridge) or {}
            kind = str(data.get("kind") or "create")
        except StateError:
            data, kind = {}, "unreadable"
        found.append(PendingRecord(
            bridge=bridge, uplink=data.get("uplink"), kind=kind,
            created=data.get("created"), pid=data.get("pid")))
    return found


@audited("net.rollback", target="bridge")
def rollback(caller: Caller, bridge: str) -> RollbackResult:
    """Restore the uplink of an unfinished ``net create --uplink`` from its record (after
    a crash or SIGKILL) and remove the bridge."""
    path = record_path(bridge)
    record = _read_record(bridge)
    if record is None:
        raise NotFoundError(f"no rollback record of bridge '{bridge}'",
                            hint="nothing to restore: a finished or rolled-back change leaves "
                                 f"none (records are in {record_dir()})")
    uplink = str(record.get("uplink"))
    if record.get("boot_id") and record["boot_id"] != kernel.boot_id():
        path.unlink(missing_ok=True)
        return RollbackResult(bridge=bridge, uplink=uplink, restored=False, stale=True)
    if record.get("netns") != kernel.netns_id():
        raise StateError(f"the rollback record of bridge '{bridge}' was made in another "
                         "network namespace",
                         hint="run the command there ('ip netns exec NS kvmops net "
                              f"rollback {bridge}')")
    pid = int(record.get("pid") or 0)
    guard = int(record.get("guard_pid") or 0)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_exclusive())
        except StateError:
            # The owner holds the lock while it applies. A live owner without it (a
            # kvmops server whose job ended with differences left) no longer applies.
            if pid and _owner_running(pid):
                raise StateError(f"kvmops (pid {pid}) is still applying bridge '{bridge}'; "
                                 "it rolls back by itself when its check fails or it is "
                                 "stopped", hint=f"wait for it, or stop it ('kill {pid}')"
                                 ) from None
            raise
        if guard and _owner_running(guard):
            raise StateError(f"the guard of bridge '{bridge}' (pid {guard}) is restoring "
                             f"{uplink}", hint="wait a few seconds, then look again")
        if _read_record(bridge) != record:
            raise StateError(f"the rollback record of bridge '{bridge}' changed meanwhile",
                             hint=f"look again: 'kvmops net rollback {bridge}'")
        with _uninterruptible():
            steps, left = _restore(record)
        if left:
            raise StateError(f"rollback of bridge '{bridge}' left differences on {uplink}: "
                             f"{'; '.join(left)}",
                             hint="fix them by hand (the record keeps the prior state: "
                                  f"{path}), then remove the record")
        path.unlink(missing_ok=True)
    return RollbackResult(bridge=bridge, uplink=uplink, restored=True, steps=steps,
                          kind=str(record.get("kind") or "create"))


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--guard":
        sys.exit(_guard(Path(sys.argv[2]), int(sys.argv[3])))
    sys.exit("usage: python -m kvmops.services.bridges --guard RECORD FD")


def _report_plan(report: Callable[[str], None], now: str, target: Any, device: str,
                 verify_timeout: float, steps: list[Any]) -> None:
    """Tell the state now, the check to come and the plan, step by step with its why."""
    report(f"now: {now}")
    for note in target.notes:
        report(f"note: {note}")
    if target.address is not None:
        report(f"check after the change: {target.address} ({target.source}) through next "
               f"hop {target.next_hop} must answer on {device} within {verify_timeout:g} s")
    report(f"plan ({len(steps)} steps):")
    for step in steps:
        report(f"  {step}    # {step.why}")

"""Hosts: the libvirt hosts kvmops manages from one place.

The local host is always there as ``local`` (the configured URI); others are added by
name and URI and kept in the database. ``host list`` asks every host at once, each in
a thread of its own under a deadline (3 s by default): a host that does not answer in
time is shown ``reachable: false`` with the reason, and never delays the others (its
thread is left to finish, or fail, on its own and closes its connection then).

A URI is validated before anything connects to it: only the qemu transports (ssh, tls,
tcp, unix, and qemu:///system), a plain host name or address, an absolute path, a
known set of query parameters, and no part that a shell or ssh could take as syntax
or as an option (libvirt's ssh transport runs ``ssh HOST ...``; a host name such as
``-oProxyCommand=...`` would be an option, and ``netcat=``/``command=`` name programs).

A remote host that failed lately is answered for at once by a server's lists, while one
background probe asks it again (:mod:`kvmops.services.reachability`).

Roles (API/web): viewers list and read; admins add and remove. The command line is
root.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

from kvmops.errors import HostUnavailableError, KvmopsError, StateError, ValidationError
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.host.remote import Health, Summary
    from kvmops.store.db import Store

T = TypeVar("T")

LOCAL = "local"
DEFAULT_DEADLINE_S = 3.0
#: Words that --host takes besides host names.
RESERVED = {"all": "every host", "auto": "the host placement picks"}
LIST_DEADLINE_S = 5.0  # ``vm list --host all`` (the CLI waits longer than a page)
ADD_DEADLINE_S = 15.0
SCHEMES = ("qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+unix", "qemu")
#: libvirt URI parameters a host URI may carry (no netcat=/command=/proxy=: programs).
QUERY_KEYS = {"keyfile", "known_hosts", "known_hosts_verify", "no_tty", "no_verify",
              "pkipath", "socket", "sshauth", "mode"}
_PATH_KEYS = {"keyfile", "known_hosts", "pkipath", "socket"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOSTNAME = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]+$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_VALUE = re.compile(r"^[A-Za-z0-9_./:@+,=-]{1,512}$")
_PATH = re.compile(r"^/[A-Za-z0-9_./+-]{0,1023}$")
_URI_HINT = ("use qemu+ssh://[USER@]HOST/system, qemu+tls://HOST/system, "
             "qemu+tcp://HOST/system, qemu+unix:///system or qemu:///system")


# --------------------------------------------------------------------------- validation
def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValidationError(f"invalid host name {name!r}",
                              hint="use letters, digits, '.', '_' and '-' (64 at most), "
                                   "starting with a letter or digit")
    return name


def validate_uri(uri: str) -> str:
    """The URI as given when it is one kvmops connects to (ValidationError naming the
    offending part otherwise)."""

    def bad(what: str) -> ValidationError:
        return ValidationError(f"invalid host URI {uri!r}: {what}", hint=_URI_HINT)

    if len(uri) > 1024 or any(c.isspace() or not c.isprintable() for c in uri):
        raise bad("spaces, control characters or too long")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        raise bad(str(err)) from err
    if parts.scheme not in SCHEMES:
        raise bad(f"scheme {parts.scheme or '(none)'!r} is not one of {', '.join(SCHEMES)}")
    if parts.fragment or "#" in uri:
        raise bad("a fragment ('#')")
    if parts.path not in ("/system", "/session"):
        raise bad(f"path {parts.path or '(none)'!r} (use /system)")
    host = parts.hostname
    if parts.scheme in ("qemu", "qemu+unix"):
        if parts.netloc:
            raise bad(f"{parts.scheme} names no host (use {parts.scheme}:///system)")
        if parts.scheme == "qemu" and parts.query:
            raise bad("qemu:///system takes no parameters")
    else:
        if not host:
            raise bad(f"{parts.scheme} needs a host")
        raw = parts.netloc.rsplit("@", 1)[-1]
        if raw.startswith("["):
            if not _IPV6.match(host):
                raise bad(f"host {host!r}")
        elif not _HOSTNAME.match(host):
            raise bad(f"host {host!r} (a host name or an address; not an option)")
        if parts.password is not None:
            raise bad("a password in the URI (use an ssh key or TLS certificates)")
        if parts.username is not None and not _USER.match(parts.username):
            raise bad(f"user {parts.username!r}")
        if parts.username is not None and parts.scheme != "qemu+ssh":
            raise bad(f"a user name with {parts.scheme}")
        if port is not None and not 1 <= port <= 65535:
            raise bad(f"port {port}")
    if parts.query:
        seen: set[str] = set()
        for key, value in parse_qsl(parts.query, keep_blank_values=True,
                                    strict_parsing=False):
            if key not in QUERY_KEYS:
                raise bad(f"parameter {key!r} (allowed: {', '.join(sorted(QUERY_KEYS))})")
            if key in seen:
                raise bad(f"parameter {key!r} given twice")
            seen.add(key)
            if key in _PATH_KEYS:
                if not _PATH.match(value) or "/../" in value + "/":
                    raise bad(f"{key} must be an absolute path of plain characters")
            elif not _VALUE.match(value) or value.startswith("-"):
                raise bad(f"value of {key!r}")
        if "&" in parts.query and any(not part for part in parts.query.split("&")):
            raise bad("an empty parameter")
    return uri


# --------------------------------------------------------------------------- parallel
@dataclass
class Outcome(Generic[T]):
    """One task's result, or why there is none."""

    value: T | None = None
    error: str | None = None


def gather(tasks: dict[str, Callable[[], T]], deadline: float) -> dict[str, Outcome[T]]:
    """Run every task at once (a daemon thread each) and return by ``deadline`` seconds:
    a task not done by then is an outcome with an error saying so (its thread goes on
    until its call returns; its result is dropped). A KvmopsError becomes its message."""
    results: dict[str, Outcome[T]] = {}
    lock = threading.Condition()

    def run(key: str, task: Callable[[], T]) -> None:
        try:
            outcome: Outcome[T] = Outcome(value=task())
        except KvmopsError as err:
            outcome = Outcome(error=err.message)
        except Exception as err:  # a bug or an unexpected library error: shown, not raised
            outcome = Outcome(error=f"{type(err).__name__}: {err}")
        with lock:
            results.setdefault(key, outcome)
            lock.notify_all()

    for key, task in tasks.items():
        threading.Thread(target=run, args=(key, task), name=f"kvmops-host-{key}",
                         daemon=True).start()
    with lock:
        lock.wait_for(lambda: len(results) == len(tasks), timeout=deadline)
        for key in tasks:
            results.setdefault(key, Outcome(
                error=f"did not answer within {deadline:g} s"))
        return {key: results[key] for key in tasks}


# --------------------------------------------------------------------------- records
@dataclass
class HostEntry(Record):
    """One host as ``host list`` shows it."""

    name: str
    uri: str
    local: bool
    reachable: bool
    error: str | None = None
    hostname: str | None = None
    libvirt_version: str | None = None
    qemu_version: str | None = None
    vms_running: int | None = None
    vms_defined: int | None = None
    added_at: datetime | None = None
    added_by: str | None = None
    last_seen: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class HostHealth(HostEntry):
    """One host as ``host info`` shows it: the list's fields and its health."""

    accelerator: str | None = None
    cpu_model: str | None = None
    cpus: int | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    pools_active: int | None = None
    pool_capacity: int | None = None
    pool_available: int | None = None


@dataclass
class _Known:
    name: str
    uri: str
    local: bool
    added_at: datetime | None = None
    added_by: str | None = None
    last_seen: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- plumbing
_server_store: Store | None = None


def use_database(store: Store | None) -> None:
    """The server's open database (for callers that pass none)."""
    global _server_store
    _server_store = store


def _with_store(db: str | Store | None, fn: Callable[[Store], T]) -> T:
    if db is None and _server_store is not None:
        db = _server_store
    if db is not None and not isinstance(db, str):
        return fn(db)
    from kvmops.config import settings
    from kvmops.store import migrated

    with migrated(db or settings().db) as store:
        return fn(store)


def _local() -> _Known:
    from kvmops.config import settings

    return _Known(name=LOCAL, uri=settings().uri, local=True)


def _known(db: str | Store | None) -> list[_Known]:
    from kvmops.store import hosts as store_hosts

    rows = _with_store(db, store_hosts.hosts)
    return [_local()] + [_Known(name=r.name, uri=r.uri, local=False, added_at=r.added_at,
                                added_by=r.added_by, last_seen=r.last_seen,
                                labels=r.labels) for r in rows]


def _find(db: str | Store | None, name: str) -> _Known:
    from kvmops.store import hosts as store_hosts

    if name == LOCAL:
        return _local()
    row = _with_store(db, lambda store: store_hosts.get(store, name))
    return _Known(name=row.name, uri=row.uri, local=False, added_at=row.added_at,
                  added_by=row.added_by, last_seen=row.last_seen, labels=row.labels)


def _probe_summary(uri: str) -> Summary:
    from kvmops.host import remote

    with remote.POOL.connection(uri) as conn:
        return remote.summary(conn)


def _probe_health(uri: str) -> Health:
    from kvmops.host import remote

    with remote.POOL.connection(uri) as conn:
        return remote.health(conn)


def _mark_seen(db: str | Store | None, names: list[str], when: datetime) -> None:
    from kvmops.store import hosts as store_hosts

    names = [n for n in names if n != LOCAL]
    if names:
        _with_store(db, lambda store: store_hosts.seen(store, names, when))


def uri_of(caller: Caller, name: str | None, db: str | Store | None = None) -> str:
    """The libvirt URI of host ``name`` (None or ``local``: the configured one), for the
    commands that take ``--host``."""
    return _find(db, name or LOCAL).uri


def known_hosts(db: str | Store | None = None) -> list[tuple[str, str, bool]]:
    """Every host's name, URI and whether it is the local one (``local`` first),
    without asking any of them."""
    return [(k.name, k.uri, k.local) for k in _known(db)]


# --------------------------------------------------------------------------- use cases
def list_hosts(caller: Caller, db: str | Store | None = None, *,
               deadline: float = DEFAULT_DEADLINE_S,
               probe: Callable[[str], Summary] | None = None) -> list[HostEntry]:
    """Every host (``local`` first) with whether it answered within ``deadline``."""
    from kvmops.services import reachability

    known = _known(db)
    ask: Callable[[str], Summary] = probe or _probe_summary
    memory = reachability.REACHABILITY
    # a remote host that failed lately is answered for at once, and asked again aside
    down = {k.name: gone for k in known
            if not k.local and (gone := memory.down(k.uri)) is not None}
    for k in known:
        if k.name in down:
            memory.recheck(k.uri, functools.partial(ask, k.uri))

    def task(k: _Known) -> Callable[[], Summary]:
        call = functools.partial(ask, k.uri)
        return call if k.local else functools.partial(memory.ask, k.uri, call)

    outcomes = gather({k.name: task(k) for k in known if k.name not in down}, deadline)
    for k in known:
        if k.name in down:
            outcomes[k.name] = Outcome(error=down[k.name].message())
        elif outcomes[k.name].value is None and not k.local:
            memory.timed_out(k.uri, outcomes[k.name].error or "no answer")
    now = datetime.now(UTC)
    entries = []
    for k in known:
        outcome = outcomes[k.name]
        entry = HostEntry(name=k.name, uri=k.uri, local=k.local,
                          reachable=outcome.value is not None, error=outcome.error,
                          added_at=k.added_at, added_by=k.added_by, labels=k.labels,
                          last_seen=now if outcome.value is not None else k.last_seen)
        if outcome.value is not None:
            for key, value in vars(outcome.value).items():
                setattr(entry, key, value)
        entries.append(entry)
    _mark_seen(db, [e.name for e in entries if e.reachable], now)
    return entries


def host_info(caller: Caller, name: str, db: str | Store | None = None, *,
              deadline: float = DEFAULT_DEADLINE_S * 3,
              probe: Callable[[str], Health] | None = None) -> HostHealth:
    """One host's health: reachable, versions, accelerator, CPU model, memory, pool
    space, VM counts, when it last answered."""
    validate_name(name)
    k = _find(db, name)
    ask = probe or _probe_health
    outcome = gather({k.name: lambda: ask(k.uri)}, deadline)[k.name]
    now = datetime.now(UTC)
    result = HostHealth(name=k.name, uri=k.uri, local=k.local,
                        reachable=outcome.value is not None, error=outcome.error,
                        added_at=k.added_at, added_by=k.added_by, labels=k.labels,
                        last_seen=now if outcome.value is not None else k.last_seen)
    if outcome.value is not None:
        for key, value in vars(outcome.value).items():
            setattr(result, key, value)
        _mark_seen(db, [k.name], now)
    return result


def _labels(labels: dict[str, str] | None) -> dict[str, str]:
    found = dict(labels or {})
    for key, value in found.items():
        if not _NAME.match(key) or not re.match(r"^[A-Za-z0-9_.:/@+-]{0,128}$", value):
            raise ValidationError(f"invalid label {key}={value}",
                                  hint="use KEY=VALUE with letters, digits and . _ - : / @ +")
    return found


@audited("host.add", target="name")
def add_host(caller: Caller, name: str, uri: str, db: str | Store | None = None, *,
             check: bool = True, labels: dict[str, str] | None = None,
             deadline: float = ADD_DEADLINE_S,
             probe: Callable[[str], Summary] | None = None) -> HostEntry:
    """Remember host ``name`` at ``uri``, after connecting to it once (unless
    ``check`` is off: a host being set up)."""
    from kvmops.store import hosts as store_hosts

    validate_name(name)
    if name == LOCAL:
        raise StateError("the local host is always present as 'local'",
                         hint="choose another name for a remote host")
    if name in RESERVED:
        raise ValidationError(f"host name '{name}' is reserved (--host {name} means "
                              f"{RESERVED[name]})", hint="choose another name")
    validate_uri(uri)
    wanted = _labels(labels)
    summary: Summary | None = None
    if check:
        ask: Callable[[str], Summary] = probe or _probe_summary
        tasks: dict[str, Callable[[], Summary]] = {name: lambda: ask(uri)}
        outcome = gather(tasks, deadline)[name]
        if outcome.value is None:
            raise HostUnavailableError(
                f"host '{name}' ({uri}) cannot be reached: {outcome.error}",
                hint="check the URI, the network and that libvirtd listens there; "
                     "or add it anyway with --no-check")
        summary = outcome.value
        from kvmops.services.reachability import REACHABILITY

        REACHABILITY.answered(uri)  # it answers now: the lists include it again
    row = _with_store(db, lambda store: store_hosts.add(store, name, uri, wanted,
                                                        caller.name))
    entry = HostEntry(name=row.name, uri=row.uri, local=False,
                      reachable=summary is not None, added_at=row.added_at,
                      added_by=row.added_by, labels=row.labels)
    if summary is not None:
        for key, value in vars(summary).items():
            setattr(entry, key, value)
        now = datetime.now(UTC)
        entry.last_seen = now
        _mark_seen(db, [name], now)
    else:
        entry.error = "not checked (--no-check)"
    return entry


@audited("host.remove", target="name")
def remove_host(caller: Caller, name: str, db: str | Store | None = None) -> None:
    """Forget host ``name`` (its VMs and daemon are not touched)."""
    from kvmops.store import hosts as store_hosts

    validate_name(name)
    if name == LOCAL:
        raise StateError("the local host cannot be removed",
                         hint="it is the configured libvirt URI ('kvmops config')")
    uri = _with_store(db, lambda store: store_hosts.get(store, name)).uri
    _with_store(db, lambda store: store_hosts.remove(store, name))
    if uri not in {k.uri for k in _known(db)}:  # no other name for the same daemon
        from kvmops.host import remote
        from kvmops.services.reachability import REACHABILITY
        from kvmops.services.session import CONNECTIONS

        remote.POOL.drop(uri)
        CONNECTIONS.drop(uri)
        REACHABILITY.forget(uri)

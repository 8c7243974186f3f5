"""The state database as a ``kvmops`` command sees it: job and audit rows written with
plain SQL, without SQLAlchemy's start-up cost (a command that changes state must stay
as quick as the tool it replaces).

The server owns the schema (it migrates at start); a command only writes rows into it.
The database is *reachable* when it exists with that schema: the configured URL (``db``
in the configuration, ``KVMOPS_DB``), which a command never creates, else the SQLite
file under the state directory, which the first command on a fresh host creates (its
jobs and refusals are recorded before any server ran). A database it cannot reach or
write makes it silent: the command's own work does not depend on its records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvmops.config import settings

log = logging.getLogger("kvmops.store")
_SQLITE = "sqlite:///"


def state_db_url() -> str:
    """The URL of the state database this host's server uses by default."""
    configured = settings().db
    return configured or f"{_SQLITE}{settings().state_dir / 'kvmops.db'}"


class StateDb:
    """One connection to an existing state database (SQLite by the standard library,
    anything else through SQLAlchemy Core). Statements use ``:name`` parameters, which
    both understand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._engine: Any = None
        if url.startswith(_SQLITE):
            path = Path(url[len(_SQLITE):].split("?", 1)[0])
            if not path.is_file():
                raise FileNotFoundError(path)
            # autocommit: each statement its own transaction, never a lock held between.
            self._sqlite = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5,
                                           isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA busy_timeout=5000")
        else:
            from sqlalchemy import create_engine

            from kvmops.store.db import normalize_url

            normalized = normalize_url(url)
            args = {"connect_timeout": 3} if normalized.startswith("postgresql") else {}
            self._engine = create_engine(normalized, connect_args=args)
        # The schema this module writes (the server migrated it); else unreachable.
        self.execute("SELECT id, pid FROM jobs WHERE 1 = 0")
        self.execute("SELECT id, via FROM audit_log WHERE 1 = 0")

    def _time(self, value: datetime) -> Any:
        """SQLite keeps times as SQLAlchemy writes them (naive UTC text)."""
        if self._sqlite is not None:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ",
                                                                        timespec="microseconds")
        return value

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        values = {k: self._time(v) if isinstance(v, datetime) else v
                  for k, v in (params or {}).items()}
        with self._lock:
            if self._sqlite is not None:
                return list(self._sqlite.execute(sql, values).fetchall())
            from sqlalchemy import text

            with self._engine.begin() as conn:
                result = conn.execute(text(sql), values)
                return [tuple(row) for row in result] if result.returns_rows else []

    def close(self) -> None:
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    # audit ---------------------------------------------------------------------------
    def audit(self, *, user: str | None, command: str, action: str, target: str | None,
              exit_code: int, via: str, job_id: str | None = None) -> None:
        """One audit row of a command: ``method`` CLI, ``path`` the command (never its
        arguments: they may hold secrets), ``status_code`` its exit code."""
        self.execute(
            "INSERT INTO audit_log (time, \"user\", method, path, action, target, status_code,"
            " result, job_id, address, via) VALUES (:time, :user, :method, :path, :action,"
            " :target, :status, :result, :job_id, NULL, :via)",
            {"time": datetime.now(UTC), "user": _clip(user, 64), "method": via.upper()[:8],
             "path": _clip(command, 512) or "", "action": action[:64],
             "target": _clip(target, 255), "status": exit_code,
             "result": "ok" if exit_code == 0 else "failed", "job_id": job_id,
             "via": via[:8]})

    # jobs ----------------------------------------------------------------------------
    def job_create(self, job_id: str, kind: str, target: str | None, user: str | None,
                   pid: int, state: str) -> None:
        now = datetime.now(UTC)
        self.execute(
            "INSERT INTO jobs (id, kind, target, state, created_by, created_at, started_at,"
            " cancel_requested, pid) VALUES (:id, :kind, :target, :state, :user, :now, :now,"
            " :no, :pid)",
            {"id": job_id, "kind": kind[:32], "target": _clip(target, 255), "state": state,
             "user": _clip(user, 64), "now": now, "no": False, "pid": pid})

    _JOB_FIELDS = frozenset({"state", "finished_at", "progress_done", "progress_total",
                             "percent", "message", "result", "error", "error_kind"})

    def job_update(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - self._JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job field(s) {sorted(unknown)}")
        if not fields:
            return
        if fields.get("result") is not None:
            fields["result"] = json.dumps(fields["result"], default=str)
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        self.execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id",
                     {**fields, "job_id": job_id})

    def job_cancel_requested(self, job_id: str) -> bool:
        rows = self.execute("SELECT cancel_requested FROM jobs WHERE id = :id", {"id": job_id})
        return bool(rows and rows[0][0])


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode()[:limit]


_opened: dict[str, StateDb | None] = {}


def state_db(url: str | None = None) -> StateDb | None:
    """The state database when it is reachable, else None (said only in the debug log).
    One connection per URL and process."""
    try:
        target = url or state_db_url()
    except Exception as err:
        log.debug("no state database: %s", err)
        return None
    if target not in _opened:
        try:
            if url is None and not settings().db:
                _create_host_database(target)
            _opened[target] = StateDb(target)
        except Exception as err:
            log.debug("state database %s not reachable: %s", target, err)
            _opened[target] = None
    return _opened[target]


def _create_host_database(url: str) -> None:
    """The host's own SQLite file, migrated, when no server has created it yet (a cost
    paid once per host: SQLAlchemy and Alembic load only then)."""
    if Path(url[len(_SQLITE):].split("?", 1)[0]).is_file():
        return
    from kvmops.store.db import migrated

    with migrated(url):
        pass


@contextlib.contextmanager
def quietly(what: str) -> Iterator[None]:
    """A record that cannot be written is lost, never the command's work."""
    try:
        yield
    except Exception as err:
        log.debug("cannot record %s: %s", what, err)

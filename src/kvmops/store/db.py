"""Engine, sessions and programmatic Alembic migrations."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from kvmops.config import settings
from kvmops.errors import HostUnavailableError, StorageError, ValidationError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


LEGACY_DB = Path("/var/lib/kvmops/kvmops.db")


def default_url() -> str:
    state = settings().state_dir
    adopt_legacy_database(LEGACY_DB, state / "kvmops.db")
    return f"sqlite:///{state / 'kvmops.db'}"


def adopt_legacy_database(old: Path, new: Path) -> bool:
    """Move the database of kvmops before 0.2 (``/var/lib/kvmops/kvmops.db``, beside the
    images) into the state directory, once, so users and tokens survive the upgrade."""
    if new.exists() or not old.is_file():
        return False
    new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        source = old.with_name(old.name + suffix)
        if source.exists():
            source.rename(new.with_name(new.name + suffix))
    return True


def normalize_url(url: str | None) -> str:
    """``postgresql://`` means psycopg 3 here; ``None`` means the default SQLite file."""
    if not url:
        return default_url()
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ValidationError(f"invalid database URL: {err}",
                              hint="use sqlite:////path/kvmops.db or "
                                   "postgresql://user@host/dbname") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValidationError(f"unsupported database '{parsed.get_backend_name()}'",
                              hint="use sqlite:///... or postgresql://...")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


class Store:
    """One database: an engine plus a session factory."""

    def __init__(self, url: str | None = None) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[OrmSession]:
        """A transaction: committed at the end of the block, rolled back on error."""
        with self._factory() as db:
            try:
                yield db
                db.commit()
            except OperationalError as err:
                db.rollback()
                raise StorageError(f"database {safe_url(self.url)} failed: "
                                   f"{str(err.orig).strip() or err}") from err
            except BaseException:
                db.rollback()
                raise

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as err:
            raise HostUnavailableError(
                f"cannot open database {safe_url(self.url)}: {str(err.orig).strip() or err}",
                hint="check --db (is the server running, the directory writable?)") from err
        except SQLAlchemyError as err:
            raise StorageError(f"migrating database {safe_url(self.url)} failed: {err}") from err

    def at_head(self) -> bool:
        """The schema is at the newest shipped revision already (a command then skips
        loading Alembic, a third of its start-up); False when unsure."""
        try:
            with self.engine.connect() as conn:
                current = conn.exec_driver_sql("SELECT version_num FROM alembic_version"
                                               ).scalars().all()
        except SQLAlchemyError:
            return False
        return list(current) == [head_revision()]

    def tables(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def close(self) -> None:
        self.engine.dispose()


_REVISION_RE = re.compile(r'^(down_)?revision = "([^"]*)"$', re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision of the shipped migrations: the one no other revises."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, value in _REVISION_RE.findall(path.read_text()):
            (revised if down else revisions).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


@contextlib.contextmanager
def migrated(url: str | None) -> Iterator[Store]:
    """The database at ``url`` (the default when None), migrated: a command may be the
    first to use it; closed afterwards."""
    store = Store(url)
    try:
        if not store.at_head():
            store.migrate()
        yield store
    finally:
        store.close()

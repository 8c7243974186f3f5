"""The log of ``kvmops serve``: uvicorn's text format, or JSON for a log shipper.

JSON is one object a line (for Fluent Bit/Fluentd, Elasticsearch, Kibana: an EFK
stack): ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the request's
fields on access records (``client``, ``method``, ``path``, ``http_version``,
``status``), whatever a caller passed with ``extra=``, and ``exc_info`` with the
traceback of an error. Chosen by ``kvmops serve --log-format json``, ``log_format`` in
the configuration file or ``KVMOPS_LOG_FORMAT``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "color_message"}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object a line; never raises on odd values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) \
                and len(record.args) == len(_ACCESS_FIELDS):
            entry.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def uvicorn_log_config(log_format: str, level: str = "INFO") -> dict[str, Any] | None:
    """The ``log_config`` for uvicorn: ``None`` keeps uvicorn's own text format; for
    ``json`` every logger (uvicorn's, kvmops', the root) writes JSON lines on stderr."""
    if log_format != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "kvmops.logs.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "alembic": {"level": "WARNING"},  # migration steps: quiet, as in text mode
        },
        "root": {"handlers": ["default"], "level": level},
    }


def configure(log_format: str, level: str = "INFO") -> None:
    """Apply the configuration now (before uvicorn does), so that the server's first
    lines are in the same format."""
    config = uvicorn_log_config(log_format, level)
    if config is not None:
        import logging.config

        logging.config.dictConfig(config)

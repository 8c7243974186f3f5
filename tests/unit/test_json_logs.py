"""The JSON log format of ``kvmops serve``: one object a line, request fields apart."""

from __future__ import annotations

import json
import logging
import sys

from kvmops.logs import JsonFormatter, uvicorn_log_config


def _record(name: str, msg: str, args: tuple[object, ...] = (), **extra: object
            ) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_one_object_per_line_with_the_standard_keys() -> None:
    line = JsonFormatter().format(_record("kvmops.api", "VM %s started\nsecond line", ("a",),
                                          user="bob", path_obj=object()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "kvmops.api"
    assert entry["message"] == "VM a started\nsecond line"
    assert entry["time"].endswith("Z") and entry["time"][:2] == "20"
    assert entry["user"] == "bob" and isinstance(entry["path_obj"], str)


def test_access_records_carry_the_request_fields() -> None:
    record = _record("uvicorn.access", '%s - "%s %s HTTP/%s" %d',
                     ("127.0.0.1:4711", "GET", "/api/v1/health?x=1", "1.1", 200))
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == '127.0.0.1:4711 - "GET /api/v1/health?x=1 HTTP/1.1" 200'
    assert (entry["client"], entry["method"], entry["path"], entry["http_version"],
            entry["status"]) == ("127.0.0.1:4711", "GET", "/api/v1/health?x=1", "1.1", 200)


def test_errors_keep_their_traceback_in_one_field() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("kvmops.api", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and "ValueError: bad" in entry["exc_info"]


def test_text_keeps_uvicorns_format_and_json_covers_every_logger() -> None:
    assert uvicorn_log_config("text") is None
    config = uvicorn_log_config("json")
    assert config is not None
    assert config["formatters"]["json"]["()"] == "kvmops.logs.JsonFormatter"
    assert set(config["loggers"]) >= {"uvicorn", "uvicorn.access"} and config["root"]

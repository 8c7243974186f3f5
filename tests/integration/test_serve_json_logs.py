"""``kvmops serve --log-format json``: every log line of a real server is one JSON
object, and a request shows up with its fields."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from tests.integration.api_server import start_server


def test_serve_logs_json_lines_with_request_fields(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path,
                          "--log-format", "json", "--access-log")
    try:
        assert httpx.get(server.url + "/api/v1/health?probe=json", timeout=30).status_code == 200
    finally:
        server.proc.send_signal(signal.SIGTERM)  # as systemd stops it
        try:
            server.proc.wait(30)
        finally:
            server.stop()
    lines = server.log.read_text().splitlines()
    # The one-time admin password block of a first start is for the operator's eyes,
    # printed apart (indented); everything else is JSON.
    entries = [json.loads(line) for line in lines
               if line.strip() and not line.startswith("  ")]
    assert entries, lines
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    assert any(e["logger"] == "kvmops.serve" and "kvmops API on" in e["message"]
               for e in entries), entries
    access = [e for e in entries if e["logger"] == "uvicorn.access"
              and e.get("path") == "/api/v1/health?probe=json"]
    assert access and access[0]["method"] == "GET" and access[0]["status"] == 200, entries
    assert access[0]["client"].startswith("127.0.0.1")


def test_serve_refuses_an_unknown_log_format_in_one_line(tmp_path: Path) -> None:
    from tests.conftest import assert_one_line_error, run_cli

    result = run_cli("serve", "--port", "1", "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
                     "--log-format", "xml")
    assert_one_line_error(result, 2, "--log-format xml", "json")

"""Monitor helpers without a QEMU: event parsing, timestamps, command JSON, filtering."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from kvmops.cli.events import format_event
from kvmops.cli.qmp import split_words
from kvmops.errors import OperationTimeoutError, QmpError, ValidationError
from kvmops.monitor.channel import (
    MonitorChannel,
    MonitorEvent,
    event_time,
    normalize_event_names,
    parse_command,
    parse_tcp,
    qmp_error,
)


# ------------------------------------------------------------------ events
def test_event_from_qmp_message() -> None:
    event = MonitorEvent.from_qmp({
        "event": "DEVICE_DELETED",
        "data": {"device": "virtio-disk1", "path": "/machine/peripheral/virtio-disk1"},
        "timestamp": {"seconds": 1700000000, "microseconds": 123456},
    })
    assert event.name == "DEVICE_DELETED"
    assert event.data["device"] == "virtio-disk1"
    assert event.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)


def test_event_without_data_has_empty_dict() -> None:
    event = MonitorEvent.from_qmp({"event": "STOP",
                                   "timestamp": {"seconds": 10, "microseconds": 5}})
    assert event.data == {}
    assert event.timestamp == datetime(1970, 1, 1, 0, 0, 10, 5, tzinfo=UTC)


def test_event_from_libvirt_parts_decodes_details_json() -> None:
    event = MonitorEvent.from_parts("BLOCK_JOB_COMPLETED", 1, 2,
                                    '{"device": "job0", "len": 10, "offset": 10}')
    assert event.data == {"device": "job0", "len": 10, "offset": 10}
    assert MonitorEvent.from_parts("STOP", 1, 2, None).data == {}
    assert MonitorEvent.from_parts("STOP", 1, 2, "").data == {}


def test_unknown_clock_becomes_now() -> None:
    before = datetime.now(UTC)
    stamp = event_time(-1, -1)
    assert before <= stamp <= datetime.now(UTC)


def test_event_to_dict_is_json_ready() -> None:
    event = MonitorEvent.from_parts("RESUME", 0, 500000)
    assert event.to_dict() == {"event": "RESUME", "timestamp": "1970-01-01T00:00:00.500000+00:00",
                               "data": {}}


def test_format_event_json_and_text() -> None:
    event = MonitorEvent.from_parts("STOP", 0, 0, {"a": 1})
    assert format_event(event, True) == (
        '{"event":"STOP","timestamp":"1970-01-01T00:00:00+00:00","data":{"a":1}}')
    text = format_event(event, False)
    assert "  STOP  " in text
    assert text.endswith('{"a":1}')
    assert text[:4] in ("1970", "1969")  # local time of the epoch


def test_event_names_any_case() -> None:
    assert normalize_event_names(["stop", "Block-Job-Completed"]) == frozenset(
        {"STOP", "BLOCK_JOB_COMPLETED"})
    assert normalize_event_names([]) is None
    assert normalize_event_names(None) is None
    with pytest.raises(ValidationError):
        normalize_event_names(["not an event"])


# ------------------------------------------------------------------ commands
@pytest.mark.parametrize(("text", "expected"), [
    ('{"execute":"query-status"}', ("query-status", None)),
    ('  {"execute": "block-dirty-bitmap-add", "arguments": {"node": "n", "name": "b"}} ',
     ("block-dirty-bitmap-add", {"node": "n", "name": "b"})),
    ('{"execute":"query-block","id":"x"}', ("query-block", None)),
    ("query-commands", ("query-commands", None)),
])
def test_parse_command(text: str, expected: tuple[str, dict[str, Any] | None]) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"execute":', "invalid QMP command JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"arguments": {}}', "'execute' must name a command"),
    ('{"execute": 3}', "'execute' must name a command"),
    ('{"execute": "x", "arguments": []}', "'arguments' must be a JSON object"),
    ('{"execute": "x", "argumnets": {}}', "unknown key(s) argumnets"),
    ("info block", "invalid QMP command JSON"),
])
def test_parse_command_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_command(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_qmp_error_carries_class_and_command() -> None:
    err = qmp_error("VM 'a'", "nope", {"x": 1}, "CommandNotFound",
                    "The command nope has not been found\n")
    assert isinstance(err, QmpError)
    assert err.error_class == "CommandNotFound"
    assert err.command == {"execute": "nope", "arguments": {"x": 1}}
    assert str(err) == ("QMP command 'nope' failed on VM 'a': CommandNotFound: "
                        "The command nope has not been found")


def test_parse_tcp() -> None:
    assert parse_tcp("127.0.0.1:4444") == ("127.0.0.1", 4444)
    assert parse_tcp("[::1]:4444") == ("::1", 4444)
    for bad in ("4444", "host:", "host:port", "host:70000", ":1"):
        with pytest.raises(ValidationError):
            parse_tcp(bad)


def test_cli_words() -> None:
    assert split_words(["vm1", "{}"], False, True) == ("vm1", "{}")
    assert split_words(["{}"], True, True) == (None, "{}")
    assert split_words(["vm1"], False, False) == ("vm1", None)
    assert split_words([], True, False) == (None, None)
    for words, endpoint, needs in ((["{}"], False, True), (["vm", "{}"], True, True),
                                   (["vm", "x"], False, False), ([], False, False)):
        with pytest.raises(ValidationError):
            split_words(words, endpoint, needs)


# ------------------------------------------------------------------ events() on a fake
class FakeChannel(MonitorChannel):
    target = "fake QEMU"

    def __init__(self, events: list[MonitorEvent]) -> None:
        self.pending = list(events)
        self.listened = False

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        return [{"name": "query-status"}, {"name": "stop"}]

    def _hmp(self, command_line: str) -> str:
        return ""

    def listen(self) -> None:
        self.listened = True

    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        return self.pending.pop(0) if self.pending else None

    def close(self) -> None:
        pass


def _events(*names: str) -> list[MonitorEvent]:
    return [MonitorEvent.from_parts(n, i, 0) for i, n in enumerate(names)]


def test_events_filters_by_name_and_ends_when_source_is_quiet() -> None:
    channel = FakeChannel(_events("STOP", "RESUME", "STOP", "SHUTDOWN"))
    assert [e.name for e in channel.events({"stop"}, timeout=5)] == ["STOP", "STOP"]
    assert channel.listened


def test_wait_event_with_predicate() -> None:
    channel = FakeChannel(_events("JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE"))
    found = channel.wait_event(["JOB_STATUS_CHANGE"], 5, lambda e: e.timestamp.second == 1)
    assert found.timestamp.second == 1


def test_wait_event_times_out_with_one_line_error() -> None:
    channel = FakeChannel(_events("RESUME"))
    with pytest.raises(OperationTimeoutError) as info:
        channel.wait_event(["BLOCK_JOB_COMPLETED"], 0.5)
    assert str(info.value) == "no BLOCK_JOB_COMPLETED event from fake QEMU within 0.5s"


def test_command_names_sorted() -> None:
    assert FakeChannel([]).command_names() == ["query-status", "stop"]


def test_hmp_failures_are_read_from_its_text() -> None:
    from kvmops.monitor.channel import hmp_failure

    assert hmp_failure("unknown command: 'nosuchcmd'\r\n") == "unknown command: 'nosuchcmd'"
    assert hmp_failure("Error: Device 'x' not found\r\n") == "Device 'x' not found"
    assert hmp_failure("VM status: running\r\n") is None
    assert hmp_failure("") is None

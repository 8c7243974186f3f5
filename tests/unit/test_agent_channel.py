"""The raw-socket agent channel: sync-delimited parsing, stale replies, re-sync, error mapping."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmops.agent.channel import (
    ReplyReader,
    SocketAgentChannel,
    classify_error,
    open_agent,
    parse_tcp,
)
from kvmops.errors import (
    AgentCommandDisabledError,
    AgentTimeoutError,
    AgentUnavailableError,
    GuestCommandError,
    ValidationError,
)
from kvmops.host.errors import libvirt_desc, translate_agent_error

SENT = b"\xff"


# ------------------------------------------------------------------ ReplyReader
def test_sync_reply_skips_stale_data_and_foreign_sync_ids() -> None:
    reader = ReplyReader()
    reader.feed(b'{"return": {"stale": 1}}\n{"ret')  # old replies, a partial one
    assert reader.next_sync_reply(42) is None
    reader.feed(SENT + b'{"return": 7}\n')  # an earlier client's sync answer
    assert reader.next_sync_reply(42) is None
    reader.feed(b'urn": 1}\n' + SENT + SENT + b'{"return": 42}\n{"return": {}, "id": "a"}\n')
    assert reader.next_sync_reply(42) is True
    assert reader.next_reply("a") == {"return": {}, "id": "a"}


def test_sync_reply_split_across_reads() -> None:
    reader = ReplyReader()
    results = []
    for piece in (b"garbage", SENT, b'{"retu', b'rn": 5', b"}", b"\n"):
        reader.feed(piece)
        results.append(reader.next_sync_reply(5))
    assert results == [None] * 5 + [True]


def test_next_reply_skips_other_ids_and_waits_for_a_full_line() -> None:
    reader = ReplyReader()
    reader.feed(b'{"return": "old", "id": "x-1"}\n{"return": "mine", "id": "x-2"')
    assert reader.next_reply("x-2") is None
    reader.feed(b"}\n")
    assert reader.next_reply("x-2") == {"return": "mine", "id": "x-2"}


def test_next_reply_without_id_is_accepted() -> None:
    reader = ReplyReader()
    reader.feed(b'\n{"error": {"class": "GenericError", "desc": "boom"}}\n')
    assert reader.next_reply("x-1") == {"error": {"class": "GenericError", "desc": "boom"}}


def test_next_reply_sentinel_means_resync() -> None:
    reader = ReplyReader()
    reader.feed(SENT + b'{"return": 1}\n')
    with pytest.raises(ValueError):
        reader.next_reply("x")


# ------------------------------------------------------------------ fake qemu-ga
Handler = Callable[[dict[str, Any], "FakeAgent"], bytes | None]


class FakeAgent:
    """A unix-socket server speaking qemu-ga's framing, driven by a handler."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.pending = b""  # bytes to send before the next reply
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data.replace(SENT, b"")  # qemu-ga resets its parser on 0xFF
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    request = json.loads(line)
                    self.requests.append(request)
                    out = self.handler(request, self)
                    if out is not None:
                        conn.sendall(self.pending + out)
                        self.pending = b""

    def close(self) -> None:
        self.server.close()


def reply(request: dict[str, Any], value: Any) -> bytes:
    body: dict[str, Any] = {"return": value}
    if "id" in request:
        body["id"] = request["id"]
    return json.dumps(body).encode() + b"\n"


def default_handler(request: dict[str, Any], agent: FakeAgent) -> bytes | None:
    if request["execute"] == "guest-sync-delimited":
        return SENT + reply({}, request["arguments"]["id"])
    if request["execute"] == "guest-ping":
        return reply(request, {})
    if request["execute"] == "guest-exec":
        return (json.dumps({"id": request["id"], "error": {
            "class": "GenericError",
            "desc": "The command guest-exec has been disabled for this instance"}}) + "\n"
        ).encode()
    if request["execute"] == "guest-file-open":
        return (json.dumps({"id": request["id"], "error": {
            "class": "GenericError",
            "desc": "failed to open file '/nope' (mode: 'r'): No such file or directory"}})
            + "\n").encode()
    return None  # silence: the client times out


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Callable[[Handler], FakeAgent]]:
    started: list[FakeAgent] = []

    def start(handler: Handler = default_handler) -> FakeAgent:
        fake = FakeAgent(tmp_path / "qga.sock", handler)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def test_handshake_discards_stale_replies(agent: Callable[[Handler], FakeAgent]) -> None:
    def handler(request: dict[str, Any], fake: FakeAgent) -> bytes | None:
        if request["execute"] == "guest-sync-delimited":
            stale = (b'{"return": {"from": "old client"}}\n{"return": "half'
                     + SENT + b'{"return": 99}\n')
            return stale + SENT + reply({}, request["arguments"]["id"])
        return default_handler(request, fake)

    fake = agent(handler)
    with SocketAgentChannel(path=str(fake.path)) as channel:
        assert channel.execute("guest-ping") == {}
    assert [r["execute"] for r in fake.requests] == ["guest-sync-delimited", "guest-ping"]


def test_timeout_then_resync_never_returns_the_late_reply(
        agent: Callable[[Handler], FakeAgent]) -> None:
    late: list[dict[str, Any]] = []

    def handler(request: dict[str, Any], fake: FakeAgent) -> bytes | None:
        if request["execute"] == "guest-slow":
            late.append(request)
            return None
        if request["execute"] == "guest-sync-delimited" and late:
            # The slow command's answer arrives just before the new sync reply.
            fake.pending = reply(late[0], "late answer")
        return default_handler(request, fake)

    fake = agent(handler)
    with SocketAgentChannel(path=str(fake.path)) as channel:
        with pytest.raises(AgentTimeoutError, match="guest-slow"):
            channel.execute("guest-slow", timeout=0.3)
        assert channel.execute("guest-ping") == {}
    syncs = [r for r in fake.requests if r["execute"] == "guest-sync-delimited"]
    assert len(syncs) == 2


def test_disabled_command_is_named_with_the_setting(
        agent: Callable[[Handler], FakeAgent]) -> None:
    fake = agent(default_handler)
    with SocketAgentChannel(path=str(fake.path)) as channel, \
            pytest.raises(AgentCommandDisabledError) as info:
        channel.execute("guest-exec", {"path": "true"})
    assert "'guest-exec'" in str(info.value)
    assert "--block-rpcs" in str(info.value)
    assert "\n" not in str(info.value)


def test_guest_error_keeps_the_agent_desc(agent: Callable[[Handler], FakeAgent]) -> None:
    fake = agent(default_handler)
    with SocketAgentChannel(path=str(fake.path)) as channel, \
            pytest.raises(GuestCommandError, match="No such file or directory"):
        channel.execute("guest-file-open", {"path": "/nope"})


def test_silent_agent_is_unavailable(agent: Callable[[Handler], FakeAgent]) -> None:
    fake = agent(lambda _request, _fake: None)
    with pytest.raises(AgentUnavailableError, match="not answering"):
        SocketAgentChannel(path=str(fake.path), sync_timeout=0.3).execute("guest-ping")


def test_refused_and_missing_sockets_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailableError, match="does not exist"):
        SocketAgentChannel(path=str(tmp_path / "missing.sock"))
    stale = tmp_path / "stale.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(stale))
    server.close()  # the file stays, nobody listens
    with pytest.raises(AgentUnavailableError, match="cannot connect"):
        SocketAgentChannel(path=str(stale))


def test_open_agent_needs_exactly_one_target() -> None:
    with pytest.raises(ValidationError):
        open_agent(None, None, None)
    with pytest.raises(ValidationError):
        open_agent("vm", "/sock", None)


def test_parse_tcp() -> None:
    assert parse_tcp("127.0.0.1:4444") == ("127.0.0.1", 4444)
    assert parse_tcp("[::1]:5") == ("::1", 5)
    with pytest.raises(ValidationError):
        parse_tcp("localhost")


# ------------------------------------------------------------------ error mapping
def test_classify_error() -> None:
    err = classify_error("VM 'a'", "guest-exec", "CommandNotFound",
                         "The command guest-exec has been disabled for this instance")
    assert isinstance(err, AgentCommandDisabledError)
    assert err.exit_code == 17
    err2 = classify_error("VM 'a'", "guest-foo", "CommandNotFound",
                          "The command guest-foo has not been found")
    assert type(err2) is GuestCommandError
    assert "too old" in str(err2)


class FakeLibvirtError(libvirt.libvirtError):
    def __init__(self, code: int, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code
        self.message = message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


@pytest.mark.parametrize(("code", "message", "expected"), [
    (libvirt.VIR_ERR_INTERNAL_ERROR,
     "internal error: unable to execute QEMU agent command 'guest-exec': "
     "The command guest-exec has been disabled for this instance", AgentCommandDisabledError),
    (libvirt.VIR_ERR_INTERNAL_ERROR,
     "internal error: unable to execute QEMU agent command 'guest-file-open': failed to open "
     "file '/x' (mode: 'r'): No such file or directory", GuestCommandError),
    (getattr(libvirt, "VIR_ERR_AGENT_UNRESPONSIVE", 86),
     "Guest agent is not responding: QEMU guest agent is not connected", AgentUnavailableError),
    (getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", 104),
     "Guest agent command timed out", AgentTimeoutError),
])
def test_libvirt_error_mapping(code: int, message: str, expected: type[Exception]) -> None:
    err = translate_agent_error(FakeLibvirtError(code, message), "web1", "guest-x")
    assert type(err) is expected
    assert "web1" in str(err)


def test_libvirt_desc() -> None:
    text = "internal error: unable to execute QEMU agent command 'guest-ping': boom: x"
    assert libvirt_desc(text) == "boom: x"
    assert libvirt_desc("other") == "other"

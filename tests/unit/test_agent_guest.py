"""Guest operations against a scripted channel: chunking, exec decoding, ssh-key fallback."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from kvmops.agent import guest
from kvmops.agent.channel import AgentChannel
from kvmops.errors import (
    CancelledError,
    GuestCommandError,
    OperationTimeoutError,
    ValidationError,
)


def test_chunk_ranges_cover_the_file_exactly() -> None:
    assert guest.chunk_ranges(0, 10) == [(0, 0)]
    assert guest.chunk_ranges(10, 10) == [(0, 10)]
    assert guest.chunk_ranges(25, 10) == [(0, 10), (10, 10), (20, 5)]
    size, chunk = 5 * 2**20 + 3, guest.CHUNK_SIZE
    ranges = guest.chunk_ranges(size, chunk)
    assert sum(n for _, n in ranges) == size
    assert all(o == i * chunk for i, (o, _) in enumerate(ranges))
    with pytest.raises(ValidationError):
        guest.chunk_ranges(1, 0)


def test_chunk_requests_stay_under_libvirt_string_limit() -> None:
    # libvirt's RPC strings are capped at 4 MiB; base64 grows data by 4/3.
    assert guest.encoded_request_size(guest.MAX_CHUNK_SIZE) < 4 * 2**20
    assert guest.encoded_request_size(3) == 4 + 128


def test_temp_name_is_hidden_next_to_the_destination() -> None:
    assert guest.temp_name("/srv/app/conf.yml", "ab12") == "/srv/app/.conf.yml.kvmops-ab12.part"


class ScriptedChannel(AgentChannel):
    """Answers from a dict of command -> value or callable(arguments)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.target = "VM 'fake'"

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> Any:
        self.calls.append((command, arguments))
        answer = self.answers[command]
        return answer(arguments) if callable(answer) else answer

    def execute_no_reply(self, command: str, arguments: dict[str, Any] | None = None, *,
                         timeout: float = 3.0) -> None:
        self.calls.append((command, arguments))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_exec_decodes_output_and_polls_until_exit() -> None:
    statuses = iter([{"exited": False},
                     {"exited": True, "exitcode": 3, "out-data": b64(b"out\n"),
                      "err-data": b64(b"err\n"), "out-truncated": True}])
    channel = ScriptedChannel({"guest-exec": {"pid": 7},
                               "guest-exec-status": lambda _a: next(statuses)})
    result = guest.exec(channel, ["sh", "-c", "x"], stdin=b"in")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert result.stdout_truncated and not result.stderr_truncated
    assert channel.calls[0] == ("guest-exec", {"path": "sh", "arg": ["-c", "x"],
                                               "capture-output": True,
                                               "input-data": b64(b"in")})


def test_exec_timeout_names_the_pid() -> None:
    channel = ScriptedChannel({"guest-exec": {"pid": 4242},
                               "guest-exec-status": {"exited": False}})
    with pytest.raises(OperationTimeoutError, match=r"4242.*may still be running"):
        guest.exec(channel, ["sleep", "100"], timeout=0.05)


class FakeGuestFs:
    """Just enough of qemu-ga's file and exec commands for the push path."""

    def __init__(self, corrupt: bool = False) -> None:
        self.files: dict[str, bytearray] = {}
        self.handles: dict[int, str] = {}
        self.corrupt = corrupt
        self.writes = 0

    def channel(self) -> ScriptedChannel:
        return ScriptedChannel({
            "guest-exec": self.exec, "guest-exec-status": self.status,
            "guest-file-open": self.open, "guest-file-write": self.write,
            "guest-file-close": lambda a: self.handles.pop(a["handle"]) and {},
        })

    def open(self, args: dict[str, Any]) -> int:
        handle = len(self.handles) + 100
        self.handles[handle] = args["path"]
        self.files[args["path"]] = bytearray()
        return handle

    def write(self, args: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(args["buf-b64"])
        self.writes += 1
        self.files[self.handles[args["handle"]]] += data
        return {"count": len(data), "eof": False}

    def exec(self, args: dict[str, Any]) -> dict[str, Any]:
        argv = [args["path"], *args.get("arg", [])]
        out, code = b"", 0
        if argv[0] == "sh":  # the prepare script: resolve + create the temp file
            remote, token = argv[4], argv[6]
            temp = guest.temp_name(remote, token)
            self.files[temp] = bytearray()
            out = f"{remote}\n{temp}\n".encode()
        elif argv[0] == "sha256sum":
            data = bytes(self.files[argv[1]]) + (b"x" if self.corrupt else b"")
            out = f"{hashlib.sha256(data).hexdigest()}  {argv[1]}\n".encode()
        elif argv[0] == "mv":
            self.files[argv[3]] = self.files.pop(argv[2])
        elif argv[:2] == ["rm", "-f"]:
            self.files.pop(argv[3], None)
        self.last = {"exited": True, "exitcode": code, "out-data": b64(out), "err-data": ""}
        return {"pid": 1}

    def status(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.last


def test_push_renames_only_after_checksum(tmp_path: Path) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    fs = FakeGuestFs()
    seen: list[tuple[int, int | None]] = []
    result = guest.push(fs.channel(), local, "/tmp/f.bin", chunk_size=64 * 1024,
                        progress=lambda d, t: seen.append((d, t)))
    assert bytes(fs.files["/tmp/f.bin"]) == local.read_bytes()
    assert list(fs.files) == ["/tmp/f.bin"]
    assert fs.writes == 4  # 256000 bytes in 64 KiB chunks
    assert seen[-1] == (256000, 256000)
    assert result.checksum == f"sha256:{hashlib.sha256(local.read_bytes()).hexdigest()}"


def test_push_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(b"data")
    fs = FakeGuestFs(corrupt=True)
    with pytest.raises(Exception, match="checksum mismatch"):
        guest.push(fs.channel(), local, "/tmp/f.bin")
    assert fs.files == {}


def test_push_aborted_by_progress_removes_the_temp_file(tmp_path: Path) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(b"x" * 300_000)
    fs = FakeGuestFs()

    def stop(done: int, _total: int | None) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(CancelledError, match="partial file was removed"):
        guest.push(fs.channel(), local, "/tmp/f.bin", chunk_size=100_000, progress=stop)
    assert fs.files == {}


def test_push_validates_arguments(tmp_path: Path) -> None:
    channel = FakeGuestFs().channel()
    local = tmp_path / "f"
    local.write_bytes(b"1")
    with pytest.raises(ValidationError, match="absolute"):
        guest.push(channel, local, "tmp/f")
    with pytest.raises(ValidationError, match="mode"):
        guest.push(channel, local, "/tmp/f", mode="rwx")
    with pytest.raises(ValidationError, match="owner"):
        guest.push(channel, local, "/tmp/f", owner="a b")


def test_ssh_keys_use_native_commands_when_supported() -> None:
    keys: list[str] = ["ssh-rsa OTHER other"]

    def add(args: dict[str, Any]) -> dict[str, Any]:
        keys.extend(k for k in args["keys"] if k not in keys)
        return {}

    channel = ScriptedChannel({
        "guest-info": {"version": "7.2", "supported_commands": [
            {"name": n, "enabled": True} for n in guest._SSH_COMMANDS]},
        "guest-ssh-add-authorized-keys": add,
        "guest-ssh-get-authorized-keys": lambda _a: {"keys": list(keys)},
        "guest-exec": {"pid": 1},
        "guest-exec-status": {"exited": True, "exitcode": 0},
        "guest-file-open": 5,
        "guest-file-read": {"count": 0, "eof": True,
                            "buf-b64": b64(b"tester:x:1000:1000::/home/tester:/bin/sh\n")},
        "guest-file-close": {},
    })
    assert guest.ssh_key_add(channel, "tester", ["ssh-ed25519 AAAA me"]) == [
        "ssh-rsa OTHER other", "ssh-ed25519 AAAA me"]
    with pytest.raises(ValidationError):
        guest.ssh_key_add(channel, "tester", ["not-a-key"])


def test_missing_user_for_fallback_ssh() -> None:
    channel = ScriptedChannel({
        "guest-info": {"version": "2.5", "supported_commands": []},
        "guest-file-open": 5,
        "guest-file-read": {"count": 0, "buf-b64": b64(b"root:x:0:0::/root:/bin/sh\n"),
                            "eof": True},
        "guest-file-close": {},
    })
    with pytest.raises(GuestCommandError, match="'nobody' does not exist"):
        guest.ssh_key_list(channel, "nobody")

"""README.md runs as written: every command block, in order, against the tiny guest.

Every fenced block whose language is ``sh``, ``bash``, ``shell`` or ``console`` is run
(``console``: the lines after ``$ ``), in README order, each in its own
``bash -e -o pipefail`` with ``.venv/bin`` first on PATH (the README activates the venv
once, at the top). A command that fails fails the test, naming the block's line and the
command. A block that cannot run here carries ``<!-- doctest: skip (reason) -->`` on the
line before it; the skips are counted, so none is ignored silently.

The README's own names are replaced, nothing else (the mapping is ``_substitutions``):
``web1`` -> a test VM name (``web1-copy`` follows), ``/srv/backup`` and ``/srv/offsite``
-> repositories in the session's backup directory, ``/var/lib/kvmops/images`` -> the
session's images directory (also KVMOPS_IMAGES_DIR), ``/tmp/guest`` and ``/tmp/restore``
-> a private directory, port 8080 -> a free port, ``~/.ssh/id_ed25519.pub`` -> a new
key. The blocks run in a work directory holding what they read (``app.tar``, ``a.raw``,
``guest.img``) and a ``.venv`` link; the API server's database is a throw-away SQLite
(KVMOPS_DB). One guest boots for the whole README; it and every VM named after it are
removed at the end, even on failure.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmops.host.connection import Host
from tests.conftest import REPO, SESSION_PREFIX
from tests.integration.conftest import remove_vm

README = REPO / "README.md"
RUN_LANGUAGES = {"sh", "bash", "shell", "console"}
BLOCK_TIMEOUT = 1200  # seconds for one block; the slowest boots the guest under TCG
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*doctest:(.*?)-->", re.DOTALL)
_SKIP = re.compile(r"^\s*skip\s*\((.+)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    script: str
    skip: str | None  # the reason, when marked skip


def _console_commands(body: str) -> str:
    """The commands of a ``console`` block: ``$ `` lines (and their ``> `` continuations)."""
    lines = []
    for line in body.splitlines():
        if line.startswith("$ ") or (line.startswith("> ") and lines):
            lines.append(line[2:])
    return "\n".join(lines) + "\n"


def parse(text: str) -> list[Block]:
    """The README's command blocks, with their skip markers; refuses what it cannot place."""
    blocks: list[Block] = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        language = match.group(1).lower()
        body = match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        between = text[previous_end:match.start()]
        previous_end = match.end()
        markers = list(_MARKER.finditer(between))
        skip = None
        if markers:
            last = markers[-1]
            directive = last.group(1)
            skip_match = _SKIP.match(directive)
            if skip_match is None or not skip_match.group(1).strip():
                raise ValueError(f"README.md:{line}: unknown doctest marker {last.group(0)!r}; "
                                 "the one marker is <!-- doctest: skip (reason) -->")
            if between[last.end():].strip():
                raise ValueError(f"README.md:{line}: a doctest marker must be right before "
                                 "its block")
            if len(markers) > 1:
                raise ValueError(f"README.md:{line}: two doctest markers for one block")
            skip = " ".join(skip_match.group(1).split())
        if language not in RUN_LANGUAGES:
            if skip is not None:
                raise ValueError(f"README.md:{line}: a doctest marker on a {language or 'plain'}"
                                 " block, which is never run")
            if re.search(r"^\s*(\$ )?kvmops ", body, re.MULTILINE):
                raise ValueError(f"README.md:{line}: kvmops commands in a block of language "
                                 f"{language or '(none)'!r}: mark it sh (or console)")
            continue
        script = _console_commands(body) if language == "console" else body
        blocks.append(Block(line, language, script, skip))
    return blocks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stage:
    """Where the README runs: its names mapped to this session's."""

    vm: str
    work: Path
    private: Path
    images: Path
    backups: Path
    port: int
    env: dict[str, str]


def _substitutions(stage: Stage) -> list[tuple[re.Pattern[str], str]]:
    pairs = [
        (r"/var/lib/kvmops/images", str(stage.images)),
        (r"/srv/backup\b", str(stage.backups / "backup")),
        (r"/srv/offsite\b", str(stage.backups / "offsite")),
        (r"/tmp/guest\b", str(stage.private / "guest")),
        (r"/tmp/restore\b", str(stage.private / "restore")),
        (r"~/\.ssh/id_ed25519\.pub", str(stage.private / "id_ed25519.pub")),
        (r"\bweb1\b", stage.vm),
        (r"\b8080\b", str(stage.port)),
    ]
    return [(re.compile(pattern), value) for pattern, value in pairs]


def substitute(script: str, stage: Stage) -> str:
    for pattern, value in _substitutions(stage):
        script = pattern.sub(value.replace("\\", "\\\\"), script)
    return script


def _ssh_public_key() -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} readme@kvmops-test\n"


def _prepare(work: Path, private: Path) -> None:
    """What the README's examples read, made in the work directory."""
    venv = Path(sys.executable).resolve().parent.parent
    if not (venv / "bin" / "activate").is_file():
        venv = REPO / ".venv"
    (work / ".venv").symlink_to(venv)
    data = b"kvmops README example\n"
    with tarfile.open(work / "app.tar", "w") as tar:
        member = tarfile.TarInfo("app/README")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with (work / "a.raw").open("wb") as raw:
        raw.truncate(16 * 2**20)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "guest.img"), "16M"],
                   check=True)
    (private / "id_ed25519.pub").write_text(_ssh_public_key())


@pytest.fixture
def stage(images_dir: Path, backups_dir: Path, host: Host) -> Iterator[Stage]:
    vm = f"{SESSION_PREFIX}readme"
    private = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}readme-", dir="/tmp"))
    private.chmod(0o755)  # libvirt-qemu reads the guest's kernel from here
    work = private / "work"
    work.mkdir()
    backups = backups_dir / "readme"
    backups.mkdir(mode=0o755)
    env = {**os.environ,
           "PATH": f"{work / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "KVMOPS_IMAGES_DIR": str(images_dir),
           "KVMOPS_DB": f"sqlite:///{private / 'kvmops.db'}",
           "COLUMNS": "200"}
    env.pop("VIRTUAL_ENV", None)
    try:
        _prepare(work, private)
        yield Stage(vm, work, private, images_dir, backups, _free_port(), env)
    finally:
        for domain in host.conn.listAllDomains(0):
            if domain.name() == vm or domain.name().startswith(f"{vm}-"):
                remove_vm(host, domain.name())
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(backups, ignore_errors=True)


_TRAP = """trap 'echo "doctest: exit $? from: $BASH_COMMAND" >&2' ERR
"""


def run_block(block: Block, stage: Stage) -> subprocess.CompletedProcess[str]:
    """One block in a fresh bash (its own process group: background jobs end with it)."""
    script = _TRAP + substitute(block.script, stage)
    proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c",
                             script], cwd=stage.work, env=stage.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ndoctest: the block did not end within {BLOCK_TIMEOUT}s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    return subprocess.CompletedProcess(script, proc.returncode, out, err)


def test_readme_blocks_are_all_run_or_skipped_with_a_reason() -> None:
    blocks = parse(README.read_text())
    run = [b for b in blocks if b.skip is None]
    skipped = [b for b in blocks if b.skip is not None]
    assert len(run) >= 5, [b.line for b in blocks]
    assert all(b.skip for b in skipped)
    # Every kvmops command group the README shows is in a block that runs.
    ran = "\n".join(b.script for b in run)
    for group in ("host", "vm", "image", "guest", "qmp", "snapshot", "backup", "serve", "user",
                  "dev"):
        assert re.search(rf"(^|[|;] *)kvmops {group}\b", ran, re.MULTILINE), group


def test_the_mapping_leaves_no_host_path_or_name_of_the_readme() -> None:
    """Run blocks touch only test directories and test VMs: a new example naming another
    host path must extend the mapping (or be marked skip)."""
    root = Path("/nonexistent/readme")
    stage = Stage("kvmops-test-x-readme", root / "work", root, root / "images",
                  root / "backups", 18080, {})
    for block in parse(README.read_text()):
        if block.skip is not None:
            continue
        script = substitute(block.script, stage)
        code = "\n".join(line.split(" #", 1)[0] for line in script.splitlines())
        assert not re.search(r"\bweb1\b|/srv/|/var/lib/kvmops/(images|backups)\b|/tmp/"
                             r"|\b8080\b", code), (block.line, code)


def test_parse_refuses_what_it_cannot_place() -> None:
    with pytest.raises(ValueError, match="unknown doctest marker"):
        parse("<!-- doctest: maybe -->\n```sh\nkvmops host info\n```\n")
    with pytest.raises(ValueError, match="mark it sh"):
        parse("```\nkvmops host info\n```\n")
    with pytest.raises(ValueError, match="right before"):
        parse("<!-- doctest: skip (x) -->\nsome words\n```sh\nkvmops host info\n```\n")
    blocks = parse("<!-- doctest: skip (needs a terminal) -->\n```sh\nkvmops vm console x\n```\n"
                   "```console\n$ kvmops host info\nkvm\n```\n")
    assert [(b.skip, b.script) for b in blocks] == [
        ("needs a terminal", "kvmops vm console x\n"), (None, "kvmops host info\n")]


def test_readme_examples_run_as_written(stage: Stage) -> None:
    blocks = parse(README.read_text())
    skipped = [b for b in blocks if b.skip is not None]
    ran = 0
    for block in blocks:
        if block.skip is not None:
            continue
        result = run_block(block, stage)
        assert result.returncode == 0, (
            f"README.md:{block.line}: the example fails as written (exit {result.returncode})\n"
            f"--- stderr (end) ---\n{result.stderr[-3000:]}\n"
            f"--- stdout (end) ---\n{result.stdout[-1500:]}")
        ran += 1
    assert ran + len(skipped) == len(blocks)
    print(f"README: {ran} blocks run, {len(skipped)} skipped: "
          + "; ".join(f"line {b.line}: {b.skip}" for b in skipped))

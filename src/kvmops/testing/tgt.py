"""A local iSCSI target for tests: Debian's user-space ``tgtd`` listening on 127.0.0.1
only (a free port), one target with one LUN backed by a file.

Each target runs its own ``tgtd`` with its own management socket (``-C PORT``), so tests
never touch a ``tgtd`` the host runs. Its pid and IQN are written under :data:`RUN_DIR`;
``make clean-test`` (:func:`remove_test_targets`) stops every one a crashed run left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/kvmops-test-tgtd")
PORTAL_HOST = "127.0.0.1"
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Target:
    iqn: str
    port: int  # the iSCSI portal's TCP port on 127.0.0.1
    control: int  # tgtd's management port (its socket /var/run/tgtd/socket.N)
    backing: Path
    pid: int

    @property
    def lun_volume(self) -> str:
        """libvirt's iscsi-direct name of LUN 1."""
        return "unit:0:0:1"


#: The management ports (``tgtd -C``) test targets use: tgtd takes 0..32767.
CONTROL_FIRST, CONTROL_LAST = 20000, 32767


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((PORTAL_HOST, 0))
        return int(sock.getsockname()[1])


def _tgtadm(control: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((PORTAL_HOST, port)) == 0


def start_target(iqn: str, backing: Path, size: int) -> Target:
    """Start a ``tgtd`` on 127.0.0.1 with target ``iqn`` and LUN 1 on the file
    ``backing`` (made sparse, ``size`` bytes), open to initiators from 127.0.0.1 only.
    Stopped again (and nothing left) when a step fails. A ``tgtd`` that exits at once
    (its port taken by a parallel test between the check and its bind) is started
    again on a fresh one, at most three times; its last words are in the error."""
    RUN_DIR.mkdir(mode=0o700, exist_ok=True)
    with open(backing, "wb") as fh:
        fh.truncate(size)
    for attempt in range(3):
        try:
            return _start(iqn, backing)
        except _TgtdExited:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _TgtdExited(RuntimeError):
    """``tgtd`` ended while starting."""


def _start(iqn: str, backing: Path) -> Target:
    port = free_port()
    # tgtd refuses a management port above 32767 (exit 34, "out of range").
    control = CONTROL_FIRST + os.getpid() % (CONTROL_LAST - CONTROL_FIRST)
    while (RUN_DIR / f"{control}.pid").exists() or Path(f"/var/run/tgtd/socket.{control}"
                                                         ).exists():
        control = control + 1 if control < CONTROL_LAST else CONTROL_FIRST
    log = RUN_DIR / f"{control}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={PORTAL_HOST}:{port}"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    (RUN_DIR / f"{control}.pid").write_text(f"{proc.pid} {iqn}\n")
    target = Target(iqn=iqn, port=port, control=control, backing=backing, pid=proc.pid)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (_tgtadm(control, "--op", "show", "--mode", "target").returncode == 0
                   and _listening(port)):
            if proc.poll() is not None:
                said = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise _TgtdExited(f"tgtd exited with {proc.returncode}: {' / '.join(said)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tgtd did not listen on {PORTAL_HOST}:{port}")
            time.sleep(0.2)
        for args in (("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn),
                     ("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                      "-b", str(backing)),
                     ("--op", "bind", "--mode", "target", "--tid", "1", "-I", PORTAL_HOST)):
            result = _tgtadm(control, *args)
            if result.returncode != 0:
                raise RuntimeError(f"tgtadm {' '.join(args)}: {result.stderr.strip()}")
    except BaseException:
        stop_target(target)
        raise
    return target


def _gone(pid: int) -> bool:
    """Has ``pid`` ended (reaped here when it is our child; a zombie counts)?"""
    with contextlib.suppress(ChildProcessError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_text.rsplit(")", 1)[-1].split()[0] == "Z"


def _stop(pid: int, control: int) -> None:
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "tgtd":
            # tgtd ignores SIGTERM while it serves targets: ask it to end first.
            subprocess.run(["tgtadm", "-C", str(control), "--op", "delete", "--mode",
                            "system"], capture_output=True, timeout=30, check=False)
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if _gone(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
                for _ in range(50):
                    if _gone(pid):
                        break
                    time.sleep(0.1)
    (RUN_DIR / f"{control}.pid").unlink(missing_ok=True)
    (RUN_DIR / f"{control}.log").unlink(missing_ok=True)
    Path(f"/var/run/tgtd/socket.{control}").unlink(missing_ok=True)
    Path(f"/var/run/tgtd/socket.{control}.lock").unlink(missing_ok=True)


def stop_target(target: Target) -> None:
    """Stop the target's ``tgtd`` (the backing file stays: the caller owns it)."""
    _tgtadm(target.control, "--op", "delete", "--mode", "target", "--tid", "1", "--force")
    _stop(target.pid, target.control)


def remove_test_targets(marker: str = "kvmops-test-") -> list[str]:
    """Stop every test ``tgtd`` a run left whose IQN contains ``marker`` (their pid files
    under :data:`RUN_DIR`); the IQNs they served."""
    if "kvmops-test-" not in marker:
        raise ValueError(f"refusing to stop targets outside the test prefix: {marker!r}")
    stopped: list[str] = []
    if not RUN_DIR.is_dir():
        return stopped
    for record in RUN_DIR.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid_text, _, iqn = record.read_text().strip().partition(" ")
            if marker not in iqn:
                continue
            _stop(int(pid_text), int(record.stem))
            stopped.append(iqn or record.stem)
    return stopped


def test_loop_devices(marker: str) -> list[str]:
    """Loop devices whose backing file's path contains ``marker`` (a test prefix)."""
    import json

    listed = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
                            capture_output=True, text=True, timeout=30, check=False)
    if listed.returncode != 0 or not listed.stdout.strip():
        return []
    devices = json.loads(listed.stdout).get("loopdevices", [])
    return [str(d["name"]) for d in devices
            if marker in str(d.get("back-file") or "")]


def detach_test_loop_devices(marker: str) -> list[str]:
    """Detach the loop devices of :func:`test_loop_devices` (unmounting them first)."""
    if "kvmops-test-" not in marker:
        raise ValueError(f"refusing to detach loop devices outside the test prefix: {marker!r}")
    detached = []
    for device in test_loop_devices(marker):
        subprocess.run(["umount", device], capture_output=True, timeout=30, check=False)
        if subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30,
                          check=False).returncode == 0:
            detached.append(device)
    return detached

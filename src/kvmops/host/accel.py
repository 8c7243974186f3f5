"""Does KVM really run a guest here, or must we fall back to TCG?

``/dev/kvm`` existing is not enough: under nested virtualisation the firmware
may run while a Linux kernel hangs before printing anything (seen on these
hosts: a boot sector runs under KVM, a Debian kernel does not). So the probe
boots a real Linux kernel with no root file system, ``panic=-1`` and
``-no-reboot``: a working accelerator prints the boot log to the serial port,
panics and QEMU exits. KVM is used only when that happens within a deadline.
Without a kernel to probe with, KVM cannot be verified and TCG is chosen.
The answer is cached per host (QEMU binary, probe kernel, running kernel).
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmops.config import settings

QEMU_BINARY = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 20.0
_PANIC_MARK = "Kernel panic"


class Accelerator(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"

    @property
    def domain_type(self) -> str:
        """libvirt's ``<domain type=...>`` for this accelerator."""
        return "kvm" if self is Accelerator.KVM else "qemu"

    @classmethod
    def from_domain_type(cls, domain_type: str) -> Accelerator:
        return cls.KVM if domain_type == "kvm" else cls.TCG


@dataclass(frozen=True)
class ProbeResult:
    accelerator: Accelerator
    kvm_device: bool
    reason: str
    key: str

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["accelerator"] = self.accelerator.value
        return data


def probe_kernel() -> Path | None:
    """A Linux kernel to probe with: the tiny guest's, else the host's newest in /boot."""
    guest_kernel = settings().cache_dir / "guest" / "vmlinuz"
    if guest_kernel.is_file():
        return guest_kernel
    candidates = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _cache_key(kernel: Path | None) -> str:
    import platform  # here (and shutil, subprocess, tempfile below): quick vm list/info
    import shutil

    parts = [platform.release()]
    for path in (shutil.which(QEMU_BINARY), kernel):
        if path and os.path.exists(path):
            stat = os.stat(path)
            parts += [str(path), str(stat.st_size), str(int(stat.st_mtime))]
    return "|".join(parts)


def _cache_path() -> Path:
    return settings().state_dir / "accelerator.json"


def run_probe(kernel: Path, accel: str = "kvm", timeout: float = PROBE_TIMEOUT_S
              ) -> tuple[bool, str]:
    """Boot ``kernel`` under ``accel`` until it panics; return (worked, reason)."""
    import shutil
    import subprocess
    import tempfile

    qemu = shutil.which(QEMU_BINARY)
    if not qemu:
        return False, f"{QEMU_BINARY} not found"
    with tempfile.TemporaryDirectory(prefix="kvmops-probe-") as tmp:
        log = Path(tmp) / "serial.log"
        cmd = [qemu, "-machine", f"pc,accel={accel}", "-m", "128", "-nodefaults",
               "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-append", "console=ttyS0 panic=-1 quiet loglevel=1",
               "-serial", f"file:{log}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            return False, (f"a {accel} guest printed nothing within {timeout:.0f}s "
                           "(nested virtualisation hangs here)")
        output = log.read_text(errors="replace") if log.exists() else ""
    if _PANIC_MARK in output:
        return True, f"a {accel} guest booted a Linux kernel"
    detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return False, f"{accel} probe failed: {detail}"


def probe(*, refresh: bool = False) -> ProbeResult:
    """The accelerator to use on this host, probing once and caching the answer."""
    kernel = probe_kernel()
    key = _cache_key(kernel)
    cache = _cache_path()
    if not refresh and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return ProbeResult(Accelerator(data["accelerator"]), bool(data["kvm_device"]),
                                   str(data["reason"]), key)
        except (ValueError, KeyError, OSError):
            pass
    forced = os.environ.get("KVMOPS_ACCEL")
    kvm_device = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if forced in ("kvm", "tcg"):
        return ProbeResult(Accelerator(forced), kvm_device, "forced by KVMOPS_ACCEL", key)
    if not kvm_device:
        result = ProbeResult(Accelerator.TCG, False, "/dev/kvm is missing or not accessible", key)
    elif kernel is None:
        # Not cached: the next call, once a kernel exists, probes for real.
        return ProbeResult(Accelerator.TCG, True,
                           "KVM not verified: no kernel to probe with (run "
                           "'kvmops dev build-guest' or install a kernel in /boot)", key)
    else:
        ok, reason = run_probe(kernel, "kvm")
        result = ProbeResult(Accelerator.KVM if ok else Accelerator.TCG, True, reason, key)
    _store(cache, result)
    return result


def _store(cache: Path, result: ProbeResult) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(result.to_json(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache we cannot write only costs a probe next time

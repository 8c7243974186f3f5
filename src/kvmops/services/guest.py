"""Guest agent use cases: read a guest (its OS, addresses, users, file systems, clock)
and change it (run commands, copy files, SSH keys, passwords, freeze, trim, power) --
through a libvirt VM's agent channel or a raw socket. Every change a command makes is
audited with the target it named."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kvmops.agent import process
from kvmops.agent.channel import AgentChannel, open_agent
from kvmops.lazy import OnFirstUse
from kvmops.services.audit import run_audited
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.agent.guest import (
        AgentInfo,
        FreezeStatus,
        FsInfo,
        GuestTime,
        GuestUser,
        Interface,
        OsInfo,
        TransferResult,
        TrimResult,
        Vcpu,
    )
    from kvmops.agent.process import ExecResult

Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``; raising from it aborts the transfer."""
__all__ = ["Guest", "Progress", "TransferResult", "open_guest"]


if TYPE_CHECKING:
    from kvmops.agent import guest as ops
else:
    # Its results are pydantic models: ``kvmops guest exec`` (kvmops.agent.process)
    # starts without it.
    ops = OnFirstUse("kvmops.agent.guest")


def __getattr__(name: str) -> Any:
    if name == "TransferResult":
        return ops.TransferResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Guest:
    """One open agent channel, for one caller: what the faces hold."""

    def __init__(self, caller: Caller, channel: AgentChannel, vm: str | None = None
                 ) -> None:
        self.caller = caller
        self.channel = channel
        self.audit_target = vm or str(channel.target)  # the VM's name when it has one

    @property
    def target(self) -> str:
        """What the channel reaches (the VM, a socket, an address), for messages."""
        return str(self.channel.target)

    def close(self) -> None:
        self.channel.close()

    def _change(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return run_audited(self.caller, action, self.audit_target,
                           lambda: fn(self.channel, *args, **kwargs))

    # reads -------------------------------------------------------------------------
    def ping(self, *args: Any, **kwargs: Any) -> None:
        return ops.ping(self.channel, *args, **kwargs)

    def info(self, *args: Any, **kwargs: Any) -> AgentInfo:
        return ops.info(self.channel, *args, **kwargs)

    def osinfo(self, *args: Any, **kwargs: Any) -> OsInfo:
        return ops.osinfo(self.channel, *args, **kwargs)

    def hostname(self, *args: Any, **kwargs: Any) -> str:
        return ops.hostname(self.channel, *args, **kwargs)

    def interfaces(self, *args: Any, **kwargs: Any) -> list[Interface]:
        return ops.interfaces(self.channel, *args, **kwargs)

    def users(self, *args: Any, **kwargs: Any) -> list[GuestUser]:
        return ops.users(self.channel, *args, **kwargs)

    def fsinfo(self, *args: Any, **kwargs: Any) -> list[FsInfo]:
        return ops.fsinfo(self.channel, *args, **kwargs)

    def vcpus(self, *args: Any, **kwargs: Any) -> list[Vcpu]:
        return ops.vcpus(self.channel, *args, **kwargs)

    def get_time(self, *args: Any, **kwargs: Any) -> GuestTime:
        return ops.get_time(self.channel, *args, **kwargs)

    def ssh_key_list(self, *args: Any, **kwargs: Any) -> list[str]:
        return ops.ssh_key_list(self.channel, *args, **kwargs)

    def fsstatus(self, *args: Any, **kwargs: Any) -> FreezeStatus:
        return ops.fsstatus(self.channel, *args, **kwargs)

    def read_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        return ops.read_bytes(self.channel, *args, **kwargs)

    def exec_status(self, *args: Any, **kwargs: Any) -> ExecResult | None:
        return process.exec_status(self.channel, *args, **kwargs)

    # changes -----------------------------------------------------------------------
    def exec(self, *args: Any, **kwargs: Any) -> ExecResult:
        result: ExecResult = self._change("guest.exec", process.exec, *args, **kwargs)
        return result

    def exec_start(self, *args: Any, **kwargs: Any) -> int:
        result: int = self._change("guest.exec", process.exec_start, *args, **kwargs)
        return result

    def push(self, *args: Any, **kwargs: Any) -> TransferResult:
        result: TransferResult = self._change("guest.push", ops.push, *args, **kwargs)
        return result

    def write_bytes(self, *args: Any, **kwargs: Any) -> TransferResult:
        result: TransferResult = self._change("guest.push", ops.write_bytes, *args, **kwargs)
        return result

    def pull(self, *args: Any, **kwargs: Any) -> TransferResult:
        result: TransferResult = self._change("guest.pull", ops.pull, *args, **kwargs)
        return result

    def set_time(self, *args: Any, **kwargs: Any) -> GuestTime:
        result: GuestTime = self._change("guest.time.set", ops.set_time, *args, **kwargs)
        return result

    def sync_time(self, *args: Any, **kwargs: Any) -> GuestTime:
        result: GuestTime = self._change("guest.time.sync", ops.sync_time, *args, **kwargs)
        return result

    def ssh_key_add(self, *args: Any, **kwargs: Any) -> list[str]:
        result: list[str] = self._change("guest.ssh.add", ops.ssh_key_add, *args, **kwargs)
        return result

    def ssh_key_remove(self, *args: Any, **kwargs: Any) -> list[str]:
        result: list[str] = self._change("guest.ssh.remove", ops.ssh_key_remove, *args, **kwargs)
        return result

    def set_password(self, *args: Any, **kwargs: Any) -> None:
        result: None = self._change("guest.password", ops.set_password, *args, **kwargs)
        return result

    def fsfreeze(self, *args: Any, **kwargs: Any) -> int:
        result: int = self._change("guest.fsfreeze", ops.fsfreeze, *args, **kwargs)
        return result

    def fsthaw(self, *args: Any, **kwargs: Any) -> int:
        result: int = self._change("guest.fsthaw", ops.fsthaw, *args, **kwargs)
        return result

    def fstrim(self, *args: Any, **kwargs: Any) -> list[TrimResult]:
        result: list[TrimResult] = self._change("guest.fstrim", ops.fstrim, *args, **kwargs)
        return result

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        result: None = self._change("guest.shutdown", ops.shutdown, *args, **kwargs)
        return result

    def reboot(self, *args: Any, **kwargs: Any) -> None:
        result: None = self._change("guest.reboot", ops.reboot, *args, **kwargs)
        return result


@contextmanager
def open_guest(caller: Caller, vm: str | None = None, socket: str | None = None,
               tcp: str | None = None, uri: str | None = None) -> Iterator[Guest]:
    """The guest agent of a libvirt VM (``vm``, ``uri``) or of a raw ``socket``/``tcp``."""
    guest = Guest(caller, open_agent(vm, socket, tcp, uri), vm)
    try:
        yield guest
    finally:
        guest.close()

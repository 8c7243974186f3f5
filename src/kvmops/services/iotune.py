"""Disk I/O limits use cases (``vm disk iotune``): read a disk's limits, change them."""

from __future__ import annotations

from collections.abc import Mapping

from kvmops.host.connection import Host
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm import iotune
from kvmops.vm.iotune import FIELDS, IoTune, IoTuneResult

__all__ = ["FIELDS", "IoTune", "IoTuneResult", "get_iotune", "set_iotune"]


def get_iotune(caller: Caller, host: Host, vm: str, target: str, *, inactive: bool = False
               ) -> IoTuneResult:
    """Disk ``target``'s limits (the running VM's, or with ``inactive`` the definition's)."""
    return iotune.read(host, vm, target, inactive=inactive)


@audited("vm.disk.iotune", target="vm")
def set_iotune(caller: Caller, host: Host, vm: str, target: str,
               changes: Mapping[str, int | None], *, config_only: bool = False
               ) -> IoTuneResult:
    """Change disk ``target``'s limits (None: keep, 0: remove); live on a running VM."""
    return iotune.apply(host, vm, target, changes, config_only=config_only)

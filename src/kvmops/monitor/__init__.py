"""The QEMU monitor (QMP): one interface, a libvirt and a raw-socket transport."""

from kvmops.monitor.channel import (
    MonitorChannel,
    MonitorEvent,
    open_monitor,
    parse_command,
)

__all__ = ["MonitorChannel", "MonitorEvent", "open_monitor", "parse_command"]

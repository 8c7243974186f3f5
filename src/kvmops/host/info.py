"""``kvmops host info``: what this host is and how kvmops will run VMs on it."""

from __future__ import annotations

from pydantic import BaseModel

from kvmops.config import settings
from kvmops.errors import NotFoundError
from kvmops.host.accel import probe
from kvmops.host.connection import Host, call, version_text
from kvmops.host.domain import Domain


class HostInfo(BaseModel):
    hostname: str
    uri: str
    libvirt_version: str
    qemu_version: str
    accelerator: str
    accelerator_reason: str
    kvm_device: bool
    cpus: int
    memory: int  # bytes
    images_dir: str
    state_dir: str
    cache_dir: str
    vms_defined: int
    vms_running: int


def host_info(host: Host, *, refresh_probe: bool = False) -> HostInfo:
    node = call("reading host info", host.conn.getInfo)
    domains = host.all_domains()
    accel = probe(refresh=refresh_probe)
    cfg = settings()
    return HostInfo(
        hostname=host.hostname(),
        uri=host.uri,
        libvirt_version=version_text(host.libvirt_version()),
        qemu_version=version_text(host.qemu_version()),
        accelerator=accel.accelerator.value,
        accelerator_reason=accel.reason,
        kvm_device=accel.kvm_device,
        cpus=int(node[2]),
        memory=host.memory_total(),
        images_dir=str(cfg.images_dir),
        state_dir=str(cfg.state_dir),
        cache_dir=str(cfg.cache_dir),
        vms_defined=len(domains),
        vms_running=sum(1 for d in domains if _active(d)),
    )


def _active(domain: Domain) -> bool:
    try:
        return domain.is_active()
    except NotFoundError:  # went away while we counted
        return False

"""restore --new-vm: a stored definition rebuilt through the typed model (pure)."""

from __future__ import annotations

from kvmops.vm.domxml import DiskSpec
from kvmops.vm.rebuild import rebuild

HOSTILE = """<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]>
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>old</name><description>&x;</description>
  <memory unit='MiB'>512</memory><vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/etc/shadow</kernel><cmdline>console=ttyS0</cmdline><boot dev='hd'/></os>
  <seclabel type='none'/>
  <devices>
    <emulator>/tmp/evil</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/srv/old-vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/dev/sda'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/root/secret.iso'/>
      <target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>
      <model type='virtio'/></interface>
    <interface type='bridge'><source bridge='br-mgmt'/></interface>
    <interface type='direct'><source dev='eth0' mode='bridge'/></interface>
    <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0'
      function='0'/></source></hostdev>
    <filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='unix'><target type='virtio' name='evil.channel'/></channel>
    <serial type='pty'/>
  </devices>
  <qemu:commandline><qemu:arg value='-device'/></qemu:commandline>
</domain>"""


def test_only_the_model_and_checked_files_survive() -> None:
    disks = [DiskSpec(target="vda", source="/images/new-vda.qcow2")]
    built = rebuild(HOSTILE, "new", domain_type="qemu", disks=disks,
                    file_ok=lambda p: None if p.startswith("/images/") else f"{p}: outside",
                    network_ok=lambda n: n == "default", bridge_ok=lambda b: False)
    xml = built.spec.to_xml()
    for gone in ("commandline", "hostdev", "filesystem", "seclabel", "/etc/shadow", "/tmp/evil",
                 "/dev/sda", "secret.iso", "evil.channel", "br-mgmt", "eth0", "52:54:00:00:00:01",
                 "root:"):
        assert gone not in xml, gone
    assert "/images/new-vda.qcow2" in xml and "<name>new</name>" in xml
    assert "type=\"qemu\"" in xml and "pc-q35-7.2" in xml and "default" in xml
    assert built.spec.agent_channel and built.spec.memory_bytes == 512 * 1024**2
    dropped = " | ".join(built.dropped)
    for item in ("<qemu:commandline>", "<seclabel>", "device <hostdev>", "device <filesystem>",
                 "channel evil.channel", "disk vdb", "CD-ROM hdc", "direct kernel boot",
                 "bridge 'br-mgmt'", "NIC(s) of a kind"):
        assert item in dropped, (item, dropped)

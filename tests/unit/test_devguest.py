"""Pure logic of the tiny guest builder: module order, init script, cpio, stamp."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kvmops.devguest import build, kmod
from kvmops.devguest.cpio import Archive

# Shaped like depmod's output for the Debian 6.1 kernel (paths relative to
# lib/modules/<version>; each line lists every module the first one needs).
MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/802/mrp.ko:
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/8021q/8021q.ko: kernel/net/802/mrp.ko kernel/net/802/garp.ko kernel/net/802/stp.ko \
kernel/net/llc/llc.ko
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/net/unrelated.ko: kernel/lib/crc16.ko
"""

VIRTIO_ORDER = [
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_console", "virtio_blk", "failover", "net_failover", "virtio_net",
    "mrp", "llc", "stp", "garp", "8021q",
]


def test_parse_modules_dep() -> None:
    mods = kmod.parse_modules_dep(MODULES_DEP)
    assert mods["ext4"].path == "kernel/fs/ext4/ext4.ko"
    assert mods["ext4"].depends == ("jbd2", "mbcache", "crc16")
    assert mods["crc32c_intel"].path == "kernel/arch/x86/crypto/crc32c-intel.ko.xz"
    assert mods["virtio_ring"].depends == ()


def test_modules_dep_round_trip() -> None:
    mods = kmod.parse_modules_dep(MODULES_DEP)
    assert kmod.parse_modules_dep(kmod.format_modules_dep(mods.values())) == mods


def test_guest_modules_load_in_the_required_order() -> None:
    order = kmod.resolve_load_order(kmod.parse_modules_dep(MODULES_DEP), kmod.GUEST_MODULES)
    assert order[: len(VIRTIO_ORDER)] == VIRTIO_ORDER
    assert order[len(VIRTIO_ORDER):] == ["crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
    assert "unrelated" not in order


def test_dependencies_come_first_whatever_the_request_order() -> None:
    mods = kmod.parse_modules_dep(MODULES_DEP)
    order = kmod.resolve_load_order(mods, ["ext4", "virtio_blk", "virtio_pci"])
    for name in order:
        for dep in mods[name].depends:
            assert order.index(dep) < order.index(name)
    assert len(order) == len(set(order))
    assert order[-1] == "virtio_pci"


def test_dashed_names_are_normalised() -> None:
    order = kmod.resolve_load_order(kmod.parse_modules_dep(MODULES_DEP), ["crc32c-intel"])
    assert order == ["crc32c_intel"]


def test_missing_module_is_a_clear_error() -> None:
    mods = kmod.parse_modules_dep("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(kmod.ModuleError, match=r"kernel module b \(needed by a\)"):
        kmod.resolve_load_order(mods, ["a"])


def test_dependency_cycle_is_an_error() -> None:
    mods = kmod.parse_modules_dep("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
    with pytest.raises(kmod.ModuleError, match="cycle: a -> b -> a"):
        kmod.resolve_load_order(mods, ["a"])


def _fake_module(modinfo: list[str]) -> bytes:
    """A minimal 64-bit ELF with a .modinfo and a section-name table."""
    info = b"".join(item.encode() + b"\0" for item in modinfo)
    shstr = b"\0.modinfo\0.shstrtab\0"
    header_size, shentsize = 64, 64
    info_off = header_size
    shstr_off = info_off + len(info)
    shoff = shstr_off + len(shstr)
    header = bytearray(header_size)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, shentsize, 3, 2)
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, info_off, len(info), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
    ]
    return bytes(header) + info + shstr + b"".join(sections)


def test_read_modinfo_from_elf() -> None:
    data = _fake_module(["depends=jbd2,mbcache,crc16", "name=ext4", "softdep=pre: crc32c"])
    info = kmod.read_modinfo(data)
    assert info["depends"] == ["jbd2,mbcache,crc16"]
    assert info["name"] == ["ext4"]


def test_modinfo_index_without_modules_dep(tmp_path: Path) -> None:
    import lzma

    moddir = tmp_path / "6.1.0-test"
    (moddir / "kernel/fs").mkdir(parents=True)
    (moddir / "kernel/fs/ext4.ko").write_bytes(_fake_module(["depends=jbd2", "name=ext4"]))
    (moddir / "kernel/fs/jbd2.ko.xz").write_bytes(
        lzma.compress(_fake_module(["depends=", "name=jbd2"])))
    index = kmod.module_index(moddir)
    assert kmod.resolve_load_order(index, ["ext4"]) == ["jbd2", "ext4"]
    assert index["jbd2"].path == "kernel/fs/jbd2.ko.xz"
    assert kmod.read_module_file(moddir / index["jbd2"].path).startswith(b"\x7fELF")


def test_init_script_loads_modules_in_order_and_spares_vda() -> None:
    template = build._templates()["init.sh"]
    order = [*VIRTIO_ORDER, "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
    script = build.render_init(template, order)
    assert f"for m in {' '.join(order)}; do" in script
    assert "@@" not in script
    assert "/dev/virtio-ports/org.qemu.guest_agent.0" in script
    assert 'exec qemu-ga -m virtio-serial -p "$AGENT_PORT"' in script
    assert '[ "$d" = vda ] && continue' in script
    assert "mkfs" not in script
    assert "kvmops-guest: $*" in script and 'say "modules loaded"' in script
    assert script.rstrip().splitlines()[-1].startswith("exec qemu-ga")


def test_render_init_rejects_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match="@@NOPE@@"):
        build.render_init("echo @@NOPE@@", [])


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_shell_scripts_parse() -> None:
    for name, text in build._templates().items():
        assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0, name


def test_parse_ldd() -> None:
    out = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
    )
    assert build.parse_ldd(out) == [
        "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_apt_depends() -> None:
    out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert build.parse_apt_depends(out) == "linux-image-6.1.0-56-amd64"
    assert build.parse_apt_depends("linux-image-amd64\n") is None


def test_parse_apt_version() -> None:
    shown = "Package: dhcpcd-base\nVersion: 9.4.1-24~deb12u5\nArchitecture: amd64\n"
    assert build.parse_apt_version(shown) == "9.4.1-24~deb12u5"
    assert build.parse_apt_version("Package: x\n") is None


def test_merge_libraries_keeps_each_once_in_order() -> None:
    qemu_ga = ["/lib/x86_64-linux-gnu/libglib-2.0.so.0", "/lib/x86_64-linux-gnu/libc.so.6",
               "/lib64/ld-linux-x86-64.so.2"]
    dhcpcd = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2",
              "/lib/x86_64-linux-gnu/libudev.so.1"]
    assert build.merge_libraries(qemu_ga, dhcpcd) == [*qemu_ga,
                                                      "/lib/x86_64-linux-gnu/libudev.so.1"]


def test_init_starts_dhcpv6_only_on_the_router_advertisements_flags() -> None:
    script = build.render_init(build._templates()["init.sh"], ["virtio_net"])
    assert "@@" not in script
    probe = (f"dhcpcd -f /etc/dhcpcd.conf -c {build.DHCP6_HOOK} -6 --test "
             f"-t {build.DHCP6_RA_TIMEOUT_S} \"$1\"")
    assert probe in script
    assert "*M*) mode=--ia_na ;;" in script and "*O*) mode=--inform6 ;;" in script
    assert f"--noipv6rs $mode -t {build.DHCP6_TIMEOUT_S} \"$1\"" in script
    # per NIC, in the background: the boot never waits for it
    assert 'dhcp6_start "$1" >"/run/dhcp6.$1.log" 2>&1 </dev/null &' in script
    # after qemu-ga's start; probes one at a time (they share dhcpcd's pid file), the
    # wait bounded
    body = script.split("dhcp6_start() {", 1)[1]
    assert body.index("sleep 2") < body.index("--test")
    assert "mkdir /run/dhcp6-probe.lock" in script and 'while [ "$i" -lt 90 ]' in script


def _hook(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the guest's dhcpcd event script on the host with dhcpcd's variables."""
    script = tmp_path / "hook.sh"
    script.write_text(build._templates()["dhcp6.sh"])
    base = {"PATH": "/usr/bin:/bin", "KVMOPS_RUN": str(tmp_path),
            "KVMOPS_RESOLV": str(tmp_path / "resolv.conf"),
            "KVMOPS_CONSOLE": str(tmp_path / "console"), "interface": "eth0"}
    return subprocess.run(["sh", str(script)], env={**base, **env}, capture_output=True,
                          text=True, timeout=30, check=False)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_dhcp6_hook_notes_the_router_advertisements_flags(tmp_path: Path) -> None:
    # dhcpcd --test reports the RA with reason TEST (ROUTERADVERT when not testing)
    done = _hook(tmp_path, reason="TEST", protocol="ra", nd1_from="fe80::1", nd1_flags="MO",
                 nd2_from="fe80::2", nd2_flags="O", nd1_prefix_information1_flags="LA")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ra6.eth0").read_text() == "MOO\n"
    assert not (tmp_path / "ra6.eth0.tmp").exists()
    _hook(tmp_path, reason="ROUTERADVERT", nd1_from="fe80::1", nd1_flags="")
    assert (tmp_path / "ra6.eth0").read_text() == "\n"  # SLAAC only: no DHCPv6
    # A TEST event of the DHCPv6 exchange (no RA variables) leaves the flags alone.
    (tmp_path / "ra6.eth0").unlink()
    _hook(tmp_path, reason="TEST", protocol="dhcp6", new_dhcp6_ia_na1_ia_addr1="fd00::5")
    assert not (tmp_path / "ra6.eth0").exists()


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_dhcp6_hook_applies_name_servers_once_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 192.168.232.1\n")
    for reason in ("BOUND6", "RENEW6"):
        done = _hook(tmp_path, reason=reason, new_dhcp6_ia_na1_ia_addr1="fd00:232::1234",
                     new_dhcp6_name_servers="fd00:232::1 fd00:232::2")
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "resolv.conf").read_text() == (
        "nameserver 192.168.232.1\nnameserver fd00:232::1\nnameserver fd00:232::2\n")
    assert (tmp_path / "console").read_text().splitlines() == [
        "kvmops-guest: dhcp6 eth0 fd00:232::1234 (BOUND6)",
        "kvmops-guest: dhcp6 eth0 fd00:232::1234 (RENEW6)"]
    _hook(tmp_path, reason="INFORM6", new_dhcp6_name_servers="fd00:238::1")
    assert "kvmops-guest: dhcp6 eth0 information (INFORM6)" in (
        tmp_path / "console").read_text()
    # Other events change nothing.
    _hook(tmp_path, reason="STOPPED")
    assert len((tmp_path / "console").read_text().splitlines()) == 3


def test_initramfs_has_the_dhcpv6_client_its_config_and_hook(tmp_path: Path) -> None:
    cpio = build.build_initramfs(tmp_path, [], {}, [], dhcp6_client=b"\x7fELF-dhcpcd")
    names = _cpio_names(cpio)
    for path in (build.DHCP6_CLIENT, "/etc/dhcpcd.conf", build.DHCP6_HOOK, "/var/lib/dhcpcd"):
        assert path.lstrip("/") in names, path
    assert b"\x7fELF-dhcpcd" in cpio and build.DHCPCD_CONF.encode() in cpio
    conf = build.DHCPCD_CONF.splitlines()
    assert "ipv6only" in conf
    # dhcpcd asks for no DHCPv6 option it is not told to: the name servers must be named
    assert "option dhcp6_name_servers, dhcp6_domain_search" in conf


def _cpio_names(data: bytes) -> set[str]:
    """Entry names of a newc archive (header: 110 bytes, name padded to 4)."""
    names, pos = set(), 0
    while pos + 110 <= len(data):
        header = data[pos:pos + 110]
        namesize, filesize = int(header[94:102], 16), int(header[54:62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.add(name)
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
    return names


def _inputs() -> build.BuildInputs:
    return build.BuildInputs(
        kernel_package="linux-image-6.1.0-56-amd64",
        kernel_version="6.1.192-2",
        qemu_ga_version="1:7.2",
        busybox_version="1:1.35.0",
        files=(("/usr/sbin/qemu-ga", 100, 1),),
        templates="abc",
        dhcp6_version="9.4.1-24~deb12u5",
    )


def test_inputs_hash_is_stable_and_sensitive() -> None:
    base = _inputs()
    assert build.inputs_hash(base) == build.inputs_hash(_inputs())
    changes = [
        {"kernel_version": "6.1.192-3"},
        {"kernel_package": "linux-image-6.1.0-57-amd64"},
        {"qemu_ga_version": "1:7.3"},
        {"busybox_version": "1:1.36"},
        {"files": (("/usr/sbin/qemu-ga", 101, 1),)},
        {"templates": "abd"},
        {"dhcp6_version": "9.4.1-25"},
        {"tools_versions": "fio 3.33-4\nsysbench 1.0.20+ds-5\n"},
        {"builder_version": build.BUILDER_VERSION + "x"},
    ]
    digests = {build.inputs_hash(replace(base, **change)) for change in changes}  # type: ignore[arg-type]
    assert len(digests) == len(changes)
    assert build.inputs_hash(base) not in digests


def _fake_outputs(out_dir: Path, digest: str) -> None:
    for name in ("vmlinuz", "initrd.img", "data.ext4", "tools.ext4"):
        (out_dir / name).write_bytes(b"x")
    stamp = {"hash": digest, "apt_key": build.apt_state_key(),
             "inputs": build.inputs_hash_payload(_inputs())}
    (out_dir / build.STAMP_NAME).write_text(json.dumps(stamp))


def test_is_current_needs_matching_stamp_and_all_outputs(tmp_path: Path) -> None:
    digest = _inputs().digest()
    assert not build.is_current(tmp_path, digest)
    _fake_outputs(tmp_path, digest)
    assert build.is_current(tmp_path, digest)
    assert not build.is_current(tmp_path, "other")
    (tmp_path / "data.ext4").unlink()
    assert not build.is_current(tmp_path, digest)
    (tmp_path / build.STAMP_NAME).write_text("not json")
    assert build.read_stamp(tmp_path) is None


def test_cached_build_returns_without_building(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[tuple[str, str] | None, str | None]] = []

    def fake_inputs(kernel: tuple[str, str] | None = None, dhcp6_version: str | None = None
                    ) -> build.BuildInputs:
        seen.append((kernel, dhcp6_version))
        return _inputs()

    def no_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("must not build")

    monkeypatch.setattr(build, "collect_inputs", fake_inputs)
    monkeypatch.setattr(build, "fetch_kernel_deb", no_build)
    _fake_outputs(tmp_path, _inputs().digest())
    image = build.build_guest(tmp_path)
    assert image.kernel == tmp_path / "vmlinuz"
    assert image.data_disk == tmp_path / "data.ext4"
    # apt was not asked: the kernel and dhcpcd versions came from the stamp.
    assert seen == [(("linux-image-6.1.0-56-amd64", "6.1.192-2"), "9.4.1-24~deb12u5")]

    with pytest.raises(AssertionError, match="must not build"):
        build.build_guest(tmp_path, force=True)


def test_write_atomic_sets_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    build.write_atomic(target, b"one")
    build.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_cpio_newc_layout() -> None:
    archive = Archive()
    archive.file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    archive.symlink("/bin/sh", "/bin/busybox")
    archive.chardev("/dev/console", 5, 1)
    archive.dir("/home/tester", uid=1000, gid=1000)
    data = archive.to_bytes()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data
    assert "/etc" in archive and "/home" in archive  # parents made implicitly
    assert data == archive.to_bytes()  # reproducible


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_cpio_readable_by_cpio_tool() -> None:
    archive = Archive()
    archive.file("/etc/hostname", b"kvmops-tiny\n")
    archive.symlink("/bin/sh", "/bin/busybox")
    archive.dir("/home/tester", uid=1000, gid=1000)
    listing = subprocess.run(
        ["cpio", "-t", "-v", "-n", "--quiet"], input=archive.to_bytes(),
        capture_output=True, check=True,
    ).stdout.decode()
    assert "etc/hostname" in listing
    assert "bin/sh -> /bin/busybox" in listing
    assert any("1000" in line and "home/tester" in line for line in listing.splitlines())

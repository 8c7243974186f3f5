"""Build the tiny test guest: a Debian kernel plus an initramfs running qemu-guest-agent.

Outputs, all in one directory (mode 0755, files 0644 so libvirt-qemu can read them):

``vmlinuz``      the kernel of Debian's current ``linux-image-amd64`` dependency,
                 taken from its .deb (downloaded with ``apt-get download`` into
                 ``<cache_dir>/debs``; the package is never installed)
``initrd.img``   gzip'd newc cpio: busybox-static, qemu-ga and its libraries, the
                 virtio, virtio_net, 8021q and ext4 modules, ``/init`` (``init.sh``
                 in this package) and udhcpc's script (``udhcpc.sh``): every NIC
                 comes up with DHCP (IPv4) and router advertisements (IPv6 SLAAC);
                 dhcpcd from Debian's ``dhcpcd-base`` (its .deb downloaded into
                 ``<cache_dir>/debs`` like the kernel's, never installed on the host)
                 with its event script (``dhcp6.sh``) does DHCPv6 when a router
                 advertisement's M (lease an address) or O (information only) flag
                 asks for it
``data.ext4``    a 32 MiB ext4 image labelled ``kvmopsfs``; the guest mounts a disk
                 with that label (never ``vda``) at ``/data``
``tools.ext4``   fio and sysbench with their libraries, label ``kvmopstools``
                 (``kvmops.devguest.tools``): attached read-only, the guest mounts it
                 on ``/opt/kvmops-tools`` and puts ``fio``/``sysbench`` in ``/usr/bin``
``.kvmops-guest.stamp``  hash of the inputs; a build with the same inputs is skipped

The guest boots in seconds under TCG, prints ``kvmops-guest: ...`` markers on the
console and ends by exec'ing ``qemu-ga`` on the ``org.qemu.guest_agent.0`` port.
It has no ACPI daemon (an ACPI shutdown request is ignored) and it never writes
to, formats or mounts ``/dev/vda``. ``guest-shutdown`` works through a
``/sbin/shutdown`` script that powers off, halts or reboots the kernel directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvmops.config import settings
from kvmops.devguest import kmod, tools
from kvmops.devguest.cpio import Archive
from kvmops.errors import KvmopsError, UnsupportedError

# Bump when the guest's content changes in a way the other inputs do not capture.
BUILDER_VERSION = "4"  # 2: virtio_net/8021q, DHCP and SLAAC; 3: DHCPv6 (dhcpcd);
# 4: /init mounts the tools disk (tools.ext4: fio, sysbench)

KERNEL_META_PACKAGE = "linux-image-amd64"
QEMU_GA = "/usr/sbin/qemu-ga"
QEMU_GA_PACKAGE = "qemu-guest-agent"
BUSYBOX = "/bin/busybox"
BUSYBOX_PACKAGE = "busybox-static"
# The DHCPv6 client: busybox's udhcpc6 is in neither Debian busybox build; dhcpcd needs
# only libc. Taken from the package's .deb, so the host's own DHCP client stays as it is.
DHCP6_PACKAGE = "dhcpcd-base"
DHCP6_CLIENT = "/usr/sbin/dhcpcd"  # in the .deb and in the guest
DHCP6_HOOK = "/usr/share/dhcpcd/kvmops-hook"
DHCP6_RA_TIMEOUT_S = 20  # the probe waits this long for a router advertisement
DHCP6_TIMEOUT_S = 40  # then the lease or information request, this long
DHCPCD_CONF = (
    "# dhcpcd in the kvmops tiny guest: DHCPv6 only, started per NIC by /init's\n"
    "# dhcp6_start (the kernel does router advertisements and SLAAC, busybox udhcpc\n"
    "# IPv4). No privilege-separation user exists here: dhcpcd runs without it.\n"
    "ipv6only\n"
    "# ask for these (without, a reply carries none; the event script applies them)\n"
    "option dhcp6_name_servers, dhcp6_domain_search\n"
)
AGENT_PORT = "org.qemu.guest_agent.0"
DATA_LABEL = "kvmopsfs"
DATA_SIZE_MIB = 32
HOSTNAME = "kvmops-tiny"
TESTER_UID = 1000
GUEST_MODDIR = "/lib/modules/kvmops"
STAMP_NAME = ".kvmops-guest.stamp"
# Busybox applets not linked into the guest: acpid would turn an ACPI power-button
# request into a shutdown (tests rely on it being ignored); init/linuxrc would
# shadow /init's role.
_SKIPPED_APPLETS = frozenset({"acpid", "init", "linuxrc"})

Progress = Callable[[str], None]


class GuestBuildError(KvmopsError):
    """Building the tiny guest failed (a download, extraction or tool run)."""


class MissingToolError(UnsupportedError):
    """A host tool or file the guest build needs is not installed."""


@dataclass(frozen=True)
class GuestImage:
    """What ``build_guest`` produced."""

    kernel: Path  # DIR/vmlinuz
    initrd: Path  # DIR/initrd.img
    data_disk: Path  # DIR/data.ext4: small ext4 image (label kvmopsfs) to attach as a 2nd disk
    tools: Path  # DIR/tools.ext4: fio and sysbench (label kvmopstools), to attach read-only


def guest_paths(directory: Path | None = None) -> GuestImage:
    """Where the tiny guest's files are (default: ``<cache_dir>/guest``, what the tests
    and ``setup-host.sh`` build); nothing is built or checked."""
    out_dir = Path(directory) if directory is not None else settings().cache_dir / "guest"
    return GuestImage(out_dir / "vmlinuz", out_dir / "initrd.img", out_dir / "data.ext4",
                      out_dir / tools.TOOLS_NAME)


@dataclass(frozen=True)
class BuildInputs:
    """Everything the build output depends on; its hash is the cache key."""

    kernel_package: str
    kernel_version: str
    qemu_ga_version: str
    busybox_version: str
    files: tuple[tuple[str, int, int], ...]  # (host path, size, mtime) of copied binaries
    templates: str  # sha256 of the shell scripts shipped in this package
    dhcp6_version: str = ""  # candidate version of DHCP6_PACKAGE
    tools_versions: str = ""  # installed versions of the tools disk's packages
    builder_version: str = BUILDER_VERSION

    def digest(self) -> str:
        return inputs_hash(self)


def inputs_hash(inputs: BuildInputs) -> str:
    """Stable sha256 of the build inputs (order-independent JSON)."""
    payload = {
        "kernel_package": inputs.kernel_package,
        "kernel_version": inputs.kernel_version,
        "qemu_ga_version": inputs.qemu_ga_version,
        "busybox_version": inputs.busybox_version,
        "files": [list(f) for f in inputs.files],
        "templates": inputs.templates,
        "dhcp6_version": inputs.dhcp6_version,
        "tools_versions": inputs.tools_versions,
        "builder_version": inputs.builder_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- helpers


def _note(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _need_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(
            f"cannot build the test guest: '{tool}' is not installed",
            hint=f"install the Debian package {package} (or run scripts/setup-host.sh)",
        )
    return path


def _run(argv: Sequence[str], what: str, *, cwd: Path | None = None, hint: str | None = None
         ) -> str:
    """Run a command, return its stdout; failures become one-line GuestBuildErrors."""
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except OSError as err:
        raise GuestBuildError(f"{what}: cannot run {argv[0]}: {err.strerror}", hint=hint) from err
    if proc.returncode != 0:
        detail = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit {proc.returncode}"
        raise GuestBuildError(f"{what}: {detail}", hint=hint)
    return proc.stdout


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "error", "dpkg-deb: error"))]
    return (errors or lines or [""])[-1]


def _pkg_version(package: str) -> str:
    _need_tool("dpkg-query", "dpkg")
    try:
        out = _run(["dpkg-query", "-W", "-f=${Version}", package], f"{package} version")
    except GuestBuildError as err:
        raise MissingToolError(
            f"cannot build the test guest: package {package} is not installed",
            hint=f"apt-get install {package} (or run scripts/setup-host.sh)",
        ) from err
    return out.strip()


def parse_apt_depends(text: str) -> str | None:
    """The first ``linux-image-*`` package in ``apt-cache depends`` output."""
    for line in text.splitlines():
        match = re.match(r"\s*\|?(?:Pre)?Depends:\s*(linux-image-\S+)", line)
        if match and not match.group(1).startswith("<"):
            return match.group(1)
    return None


def parse_apt_version(text: str) -> str | None:
    """The ``Version:`` of ``apt-cache show --no-all-versions`` output."""
    match = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def candidate_version(package: str) -> str:
    """apt's candidate version of ``package`` (from the package lists, not installed)."""
    _need_tool("apt-cache", "apt")
    hint = "run apt-get update; check the Debian mirror in /etc/apt/sources.list"
    shown = _run(["apt-cache", "show", "--no-all-versions", package],
                 f"cannot look up {package}", hint=hint)
    version = parse_apt_version(shown)
    if version is None:
        raise GuestBuildError(f"cannot look up {package}: apt-cache shows no Version", hint=hint)
    return version


def kernel_package() -> tuple[str, str]:
    """(package, candidate version) of the kernel ``linux-image-amd64`` points at."""
    _need_tool("apt-cache", "apt")
    hint = "run apt-get update; check the Debian mirror in /etc/apt/sources.list"
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE],
               f"cannot resolve {KERNEL_META_PACKAGE}", hint=hint)
    package = parse_apt_depends(out)
    if package is None:
        raise GuestBuildError(
            f"cannot resolve {KERNEL_META_PACKAGE}: apt-cache names no linux-image package",
            hint=hint,
        )
    return package, candidate_version(package)


def parse_ldd(text: str) -> list[str]:
    """Absolute library paths in ``ldd`` output, the dynamic loader included."""
    paths: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ", 1)[0]
        else:
            target = line.split(" ", 1)[0]
        if target.startswith("/") and target not in paths:
            paths.append(target)
    return paths


def libraries(binary: str, package: str) -> list[str]:
    """The host's shared libraries ``binary`` loads (``ldd``), the loader included."""
    _need_tool("ldd", "libc-bin")
    out = _run(["ldd", binary], f"cannot list the libraries of {binary}")
    if "not found" in out:
        missing = [ln.split()[0] for ln in out.splitlines() if "not found" in ln]
        raise MissingToolError(
            f"cannot build the test guest: {binary} needs missing libraries {missing}",
            hint=f"install or reinstall {package}",
        )
    return parse_ldd(out)


def qemu_ga_libraries() -> list[str]:
    return libraries(QEMU_GA, QEMU_GA_PACKAGE)


def _need_tools() -> None:
    for tool in tools.TOOLS:
        if not os.path.isfile(tool.binary):
            raise MissingToolError(
                f"cannot build the test guest's tools disk: {tool.binary} is missing",
                hint=f"apt-get install {tool.package} (or run scripts/setup-host.sh)",
            )


def tools_libraries() -> list[str]:
    """The libraries of every tool on the tools disk (each once), the loader included."""
    _need_tools()
    return merge_libraries(*(libraries(t.binary, t.package) for t in tools.TOOLS))


def tools_versions() -> dict[str, str]:
    """Installed version of each tools-disk package."""
    _need_tools()
    return {t.package: _pkg_version(t.package) for t in tools.TOOLS}


def _templates() -> dict[str, str]:
    base = resources.files("kvmops.devguest")
    return {name: base.joinpath(name).read_text() for name in
            ("init.sh", "shutdown.sh", "chpasswd.sh", "udhcpc.sh", "dhcp6.sh")}


def render_init(template: str, modules: Sequence[str], *, moddir: str = GUEST_MODDIR) -> str:
    """Fill the ``@@...@@`` placeholders of ``init.sh``."""
    values = {
        "MODULES": " ".join(modules),
        "MODDIR": moddir,
        "AGENT_PORT": AGENT_PORT,
        "DATA_LABEL": DATA_LABEL,
        "TOOLS_LABEL": tools.TOOLS_LABEL,
        "TOOLS_MOUNT": tools.TOOLS_MOUNT,
        "DHCP6_HOOK": DHCP6_HOOK,
        "RA_TIMEOUT": str(DHCP6_RA_TIMEOUT_S),
        "DHCP6_TIMEOUT": str(DHCP6_TIMEOUT_S),
    }
    text = template
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.search(r"@@[A-Z_]+@@", text)
    if leftover:
        raise ValueError(f"init template has an unknown placeholder {leftover.group(0)}")
    return text


def _file_sig(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_size, int(st.st_mtime))


def apt_state_key() -> str:
    """Changes whenever apt's package lists do (``apt-get update``): while it is the
    same, the kernel package resolved by the last build is still the candidate.
    Saves two ``apt-cache`` runs (about a second each) on every cached call."""
    parts = []
    for path in ("/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list",
                 "/etc/apt/sources.list.d"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        parts.append(f"{path}:{st.st_mtime_ns}:{st.st_size}")
    return "|".join(parts)


def collect_inputs(kernel: tuple[str, str] | None = None, dhcp6_version: str | None = None
                   ) -> BuildInputs:
    """Current inputs; ``kernel`` (package, version) and ``dhcp6_version`` skip asking
    apt for them."""
    for path, package in ((QEMU_GA, QEMU_GA_PACKAGE), (BUSYBOX, BUSYBOX_PACKAGE)):
        if not os.path.isfile(path):
            raise MissingToolError(
                f"cannot build the test guest: {path} is missing",
                hint=f"apt-get install {package} (or run scripts/setup-host.sh)",
            )
    package, version = kernel or kernel_package()
    libs = qemu_ga_libraries()
    tool_files = [t.binary for t in tools.TOOLS] + tools_libraries()
    templates = hashlib.sha256(json.dumps(
        {**_templates(), "dhcpcd.conf": DHCPCD_CONF}, sort_keys=True).encode()).hexdigest()
    return BuildInputs(
        kernel_package=package,
        kernel_version=version,
        qemu_ga_version=_pkg_version(QEMU_GA_PACKAGE),
        busybox_version=_pkg_version(BUSYBOX_PACKAGE),
        files=tuple(_file_sig(p) for p in merge_libraries([QEMU_GA, BUSYBOX, *libs],
                                                          tool_files)),
        templates=templates,
        dhcp6_version=dhcp6_version or candidate_version(DHCP6_PACKAGE),
        tools_versions=tools.versions_text(tools_versions()),
    )


def _stamp_data(out_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((out_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_stamp(out_dir: Path) -> str | None:
    """The input hash recorded by the last successful build in ``out_dir``."""
    value = _stamp_data(out_dir).get("hash")
    return value if isinstance(value, str) else None


def _stamped_versions(out_dir: Path) -> tuple[tuple[str, str], str] | None:
    """((kernel package, version), dhcpcd version) from the stamp if apt's lists have
    not changed since."""
    data = _stamp_data(out_dir)
    inputs = data.get("inputs")
    if data.get("apt_key") != apt_state_key() or not isinstance(inputs, dict):
        return None
    package, version = inputs.get("kernel_package"), inputs.get("kernel_version")
    dhcp6 = inputs.get("dhcp6_version")
    if isinstance(package, str) and isinstance(version, str) and isinstance(dhcp6, str) \
            and dhcp6:
        return (package, version), dhcp6
    return None


def is_current(out_dir: Path, digest: str) -> bool:
    """The stamp matches and every output exists."""
    outputs = (out_dir / "vmlinuz", out_dir / "initrd.img", out_dir / "data.ext4",
               out_dir / tools.TOOLS_NAME)
    return read_stamp(out_dir) == digest and all(p.is_file() for p in outputs)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp name in the same directory, fsync, rename: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One builder per directory at a time (parallel test sessions share it)."""
    with open(out_dir / ".kvmops-guest.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- kernel


def fetch_kernel_deb(package: str, version: str, debs_dir: Path) -> Path:
    """The kernel .deb in the cache, downloaded with ``apt-get download`` if absent."""
    return fetch_deb(package, version, debs_dir)


def fetch_deb(package: str, version: str, debs_dir: Path) -> Path:
    """A package's .deb in the cache, downloaded with ``apt-get download`` if absent."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    found = sorted(debs_dir.glob(pattern))
    if found:
        return found[0]
    _need_tool("apt-get", "apt")
    _run(["apt-get", "download", "-q", f"{package}={version}"],
         f"apt-get download {package}={version} failed", cwd=debs_dir,
         hint="check network access to the Debian mirror and run apt-get update")
    found = sorted(debs_dir.glob(pattern))
    if not found:
        raise GuestBuildError(f"apt-get download {package}={version} left no {pattern} "
                              f"in {debs_dir}", hint="run apt-get update and retry")
    return found[0]


def _kernel_version_dir(root: Path) -> Path:
    for base in (root / "lib/modules", root / "usr/lib/modules"):
        if base.is_dir():
            versions = sorted(p for p in base.iterdir() if p.is_dir())
            if versions:
                return versions[-1]
    raise GuestBuildError(f"the kernel package extracted in {root} has no lib/modules/<version>")


def _extract_kernel(deb: Path, work: Path) -> tuple[bytes, Path]:
    """(vmlinuz bytes, lib/modules/<version> dir) from the kernel .deb."""
    _need_tool("dpkg-deb", "dpkg")
    root = work / "deb"
    try:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"cannot unpack {deb.name}",
             hint=f"delete {deb} to download it again")
    except GuestBuildError:
        deb.unlink(missing_ok=True)  # a truncated download must not stick in the cache
        raise
    moddir = _kernel_version_dir(root)
    kernel = root / "boot" / f"vmlinuz-{moddir.name}"
    if not kernel.is_file():
        candidates = sorted((root / "boot").glob("vmlinuz-*"))
        if not candidates:
            raise GuestBuildError(f"{deb.name} contains no /boot/vmlinuz-*")
        kernel = candidates[-1]
    return kernel.read_bytes(), moddir


def _extract_dhcp6_client(deb: Path, work: Path) -> Path:
    """dhcpcd unpacked from its .deb into ``work`` (the path ``ldd`` then reads)."""
    _need_tool("dpkg-deb", "dpkg")
    root = work / "dhcpcd"
    try:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"cannot unpack {deb.name}",
             hint=f"delete {deb} to download it again")
    except GuestBuildError:
        deb.unlink(missing_ok=True)  # a truncated download must not stick in the cache
        raise
    binary = root / DHCP6_CLIENT.lstrip("/")
    if not binary.is_file():
        raise GuestBuildError(f"{deb.name} contains no {DHCP6_CLIENT}")
    return binary


def merge_libraries(*groups: Sequence[str]) -> list[str]:
    """The libraries of several binaries, each once, in first-seen order."""
    return list(dict.fromkeys(lib for group in groups for lib in group))


# --------------------------------------------------------------------------- initramfs


def _passwd_files(archive: Archive) -> None:
    archive.file("/etc/passwd", (
        "root:x:0:0:root:/root:/bin/sh\n"
        f"tester:x:{TESTER_UID}:{TESTER_UID}:kvmops tester:/home/tester:/bin/sh\n"
    ).encode())
    # Both accounts locked ('!'): guest-set-user-password can set real ones.
    archive.file("/etc/shadow", (
        b"root:!:19000:0:99999:7:::\n"
        b"tester:!:19000:0:99999:7:::\n"
    ), mode=0o640)
    archive.file("/etc/group", f"root:x:0:\ntester:x:{TESTER_UID}:\n".encode())
    archive.dir("/root", mode=0o700)
    archive.dir("/home")
    archive.dir("/home/tester", uid=TESTER_UID, gid=TESTER_UID)


def _os_files(archive: Archive) -> None:
    archive.file("/etc/hostname", f"{HOSTNAME}\n".encode())
    archive.file("/etc/os-release", (
        'NAME="kvmops tiny guest"\n'
        "ID=kvmops-tiny\n"
        f'VERSION_ID="{BUILDER_VERSION}"\n'
        f'PRETTY_NAME="kvmops tiny guest {BUILDER_VERSION}"\n'
    ).encode())
    archive.file("/etc/hosts", f"127.0.0.1 localhost {HOSTNAME}\n".encode())
    archive.file("/etc/fstab", b"")
    archive.symlink("/etc/mtab", "/proc/mounts")


def busybox_applets() -> list[str]:
    out = _run([BUSYBOX, "--list-full"], f"cannot list the applets of {BUSYBOX}")
    return [line.strip() for line in out.splitlines() if line.strip()]


def build_initramfs(modules_dir: Path, module_order: Sequence[str],
                    module_index: dict[str, kmod.ModuleInfo], libs: Sequence[str],
                    dhcp6_client: bytes | None = None) -> bytes:
    """The uncompressed newc archive of the guest's root file system (``dhcp6_client``:
    the dhcpcd binary; its libraries must be in ``libs``)."""
    archive = Archive()
    for top in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys",
                "dev", "run", "data", "mnt", "var", "var/log", "var/lib", "var/lib/dhcpcd",
                "usr/share", "usr/share/dhcpcd"):
        archive.dir(top)
    archive.dir("/tmp", mode=0o1777)
    archive.symlink("/var/run", "/run")
    archive.symlink("/var/tmp", "/tmp")
    # The kernel opens /dev/console for /init's stdio before devtmpfs is mounted.
    archive.chardev("/dev/console", 5, 1)
    archive.chardev("/dev/null", 1, 3, mode=0o666)

    archive.file(BUSYBOX, Path(BUSYBOX).read_bytes(), mode=0o755)
    for applet in busybox_applets():
        rel = applet.lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if name in _SKIPPED_APPLETS or "/" + rel == BUSYBOX:
            continue
        archive.symlink("/" + rel, BUSYBOX)

    archive.file(QEMU_GA, Path(QEMU_GA).read_bytes(), mode=0o755)
    for lib in libs:
        archive.file(lib, Path(lib).read_bytes(), mode=0o755)
    if dhcp6_client is not None:
        archive.file(DHCP6_CLIENT, dhcp6_client, mode=0o755)
        archive.file("/etc/dhcpcd.conf", DHCPCD_CONF.encode())

    for name in module_order:
        data = kmod.read_module_file(modules_dir / module_index[name].path)
        archive.file(f"{GUEST_MODDIR}/{name}.ko", data)

    scripts = _templates()
    archive.file("/init", render_init(scripts["init.sh"], module_order).encode(), mode=0o755)
    archive.file("/sbin/shutdown", scripts["shutdown.sh"].encode(), mode=0o755)
    archive.file("/usr/sbin/chpasswd", scripts["chpasswd.sh"].encode(), mode=0o755)
    archive.file("/usr/share/udhcpc/default.script", scripts["udhcpc.sh"].encode(), mode=0o755)
    archive.file(DHCP6_HOOK, scripts["dhcp6.sh"].encode(), mode=0o755)
    _passwd_files(archive)
    _os_files(archive)
    return archive.to_bytes()


# --------------------------------------------------------------------------- data disk


def build_data_disk(path: Path, work: Path) -> None:
    """A small ext4 image labelled ``kvmopsfs`` with one marker file, written atomically."""
    mkfs = _need_tool("mkfs.ext4", "e2fsprogs")
    content = work / "data-root"
    content.mkdir()
    (content / "kvmops-data.txt").write_text("kvmops tiny guest data disk\n")
    tools.write_ext4_image(path, DATA_SIZE_MIB, [mkfs, "-q", "-F", "-L", DATA_LABEL, "-E",
                                                 "root_owner=0:0", "-d", str(content)], _run)


# --------------------------------------------------------------------------- entry point


def build_guest(out_dir: Path, *, force: bool = False, progress: Progress | None = None
                ) -> GuestImage:
    """Build (or reuse) the tiny guest in ``out_dir``; see the module docstring.

    ``progress`` receives one short line per step. Returns at once when the stamp
    in ``out_dir`` matches the current inputs and ``force`` is false.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if out_dir.stat().st_mode & 0o7777 != 0o755:
            os.chmod(out_dir, 0o755)  # QEMU runs as libvirt-qemu and must reach the files
        return _build(out_dir, force, progress)
    except OSError as err:
        where = err.filename or out_dir
        raise GuestBuildError(
            f"building the test guest in {out_dir} failed: {where}: {err.strerror or err}",
            hint="check that the directory and the kvmops cache dir are writable",
        ) from err


def _build(out_dir: Path, force: bool, progress: Progress | None) -> GuestImage:
    image = guest_paths(out_dir)

    if not force:
        stamped = _stamped_versions(out_dir)
        if stamped is not None and is_current(out_dir, collect_inputs(*stamped).digest()):
            return image
    apt_key = apt_state_key()
    inputs = collect_inputs()
    digest = inputs.digest()
    with _locked(out_dir):
        if not force and is_current(out_dir, digest):  # built meanwhile, or apt lists changed
            data = _stamp_data(out_dir)
            _write_stamp(out_dir, digest, inputs, data.get("modules"), apt_key)
            return image
        cache = settings().cache_dir
        _note(progress, f"kernel package {inputs.kernel_package} {inputs.kernel_version}")
        deb = fetch_kernel_deb(inputs.kernel_package, inputs.kernel_version, cache / "debs")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kvmops-guest-build-", dir=cache) as tmp:
            work = Path(tmp)
            _note(progress, f"unpacking {deb.name}")
            kernel, moddir = _extract_kernel(deb, work)
            index = kmod.module_index(moddir)
            order = kmod.resolve_load_order(index, kmod.GUEST_MODULES)
            _note(progress, f"modules: {' '.join(order)}")
            _note(progress, f"DHCPv6 client {DHCP6_PACKAGE} {inputs.dhcp6_version}")
            dhcp6_deb = fetch_deb(DHCP6_PACKAGE, inputs.dhcp6_version, cache / "debs")
            dhcpcd = _extract_dhcp6_client(dhcp6_deb, work)
            libs = merge_libraries(qemu_ga_libraries(), libraries(str(dhcpcd), DHCP6_PACKAGE))
            _note(progress, "writing initrd.img")
            cpio = build_initramfs(moddir, order, {n: index[n] for n in order}, libs,
                                   dhcp6_client=dhcpcd.read_bytes())
            (out_dir / STAMP_NAME).unlink(missing_ok=True)
            write_atomic(image.kernel, kernel)
            write_atomic(image.initrd, gzip.compress(cpio, compresslevel=6, mtime=0))
            _note(progress, "writing data.ext4")
            build_data_disk(image.data_disk, work)
            _note(progress, f"writing {tools.TOOLS_NAME} "
                            f"({', '.join(t.name for t in tools.TOOLS)})")
            tools.build_tools_disk(image.tools, work, tools_libraries(), tools_versions(),
                                   _run,
                                   _need_tool("mkfs.ext4", "e2fsprogs"))
        _write_stamp(out_dir, digest, inputs, order, apt_key)
    _note(progress, f"guest ready in {out_dir}")
    return image


def _write_stamp(out_dir: Path, digest: str, inputs: BuildInputs, modules: object, apt_key: str
                 ) -> None:
    stamp = {"hash": digest, "inputs": inputs_hash_payload(inputs), "modules": modules,
             "apt_key": apt_key}
    write_atomic(out_dir / STAMP_NAME, (json.dumps(stamp, indent=2) + "\n").encode())
    _fsync_dir(out_dir)


def inputs_hash_payload(inputs: BuildInputs) -> dict[str, object]:
    """The inputs as recorded in the stamp file (for humans debugging a rebuild)."""
    return {
        "kernel_package": inputs.kernel_package,
        "kernel_version": inputs.kernel_version,
        "qemu_ga_version": inputs.qemu_ga_version,
        "busybox_version": inputs.busybox_version,
        "dhcp6_version": inputs.dhcp6_version,
        "tools_versions": inputs.tools_versions,
        "builder_version": inputs.builder_version,
    }

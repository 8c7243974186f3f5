"""The ``kvmops`` command starts quickly: importing its entry point loads no command
module and none of the heavy layers; the static command table stays true."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvmops.cli import main

HEAVY = ("kvmops.api", "kvmops.web", "kvmops.backup", "kvmops.store", "fastapi", "sqlalchemy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return set(json.loads(out.splitlines()[-1]))


def _loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_importing_the_entry_point_loads_no_heavy_layer() -> None:
    modules = _modules_after("import kvmops.cli.main")
    for heavy in (*HEAVY, "kvmops.cli.vm", "kvmops.cli.host", "pydantic", "lxml", "libvirt"):
        assert not _loaded(modules, heavy), heavy


def test_help_lists_every_command_without_importing_them() -> None:
    code = ("import sys\nsys.argv = ['kvmops', '--help']\nfrom kvmops.cli import main\n"
            "try:\n    main.run()\nexcept SystemExit:\n    pass\n")
    modules = _modules_after(code)
    assert not any(_loaded(modules, f"kvmops.cli.{name}") for name in main.COMMANDS)
    for heavy in HEAVY:
        assert not _loaded(modules, heavy), heavy
    result = subprocess.run([sys.executable, "-m", "kvmops.cli.main", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2}
    assert set(main.COMMANDS) <= listed, listed


@pytest.mark.parametrize("name", sorted(main.COMMANDS))
def test_each_table_entry_loads_its_command_with_the_same_help(name: str) -> None:
    command = main.load_command(name)
    assert command.name == name
    own = (command.short_help or command.help or "").strip().split("\n\n")[0]
    assert " ".join(own.split()) == main.COMMANDS[name][1]


def test_version_is_static_and_printed() -> None:
    import kvmops

    result = subprocess.run([sys.executable, "-m", "kvmops.cli.main", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kvmops {kvmops.__version__}\n"
    assert kvmops.__version__.count(".") == 2


def test_vm_list_path_loads_no_api_web_backup_or_store() -> None:
    code = ("from kvmops.cli import main\nmain.load_command('vm')\n"
            "main.load_command('guest')\n")
    modules = _modules_after(code)
    for heavy in HEAVY:
        assert not _loaded(modules, heavy), heavy


# The three commands measured against virsh (bench/cli_startup.py) run against libvirt's
# built-in test driver (no daemon, one domain named "test"); what they imported is read
# from sys.modules afterwards. In their plain forms they run without Typer and Click
# (kvmops.cli.quick); pydantic, Rich and, for the list, lxml and the life cycle module
# are what made them slow.
SLOW_FOR_ALL = ("pydantic", "rich", "typer", "click", "kvmops.agent.guest", *HEAVY)
QUICK_PATHS = [
    (["vm", "list"], 0, ("lxml", "kvmops.vm.lifecycle", "kvmops.vm.domxml")),
    (["vm", "list", "--json"], 0, ("lxml", "kvmops.vm.lifecycle", "kvmops.vm.domxml")),
    (["vm", "info", "test"], 0, ()),
    (["vm", "info", "test", "--json"], 0, ()),
    # the test domain has no agent channel: exit 14 after the whole path is imported
    (["guest", "exec", "test", "--", "/bin/true"], 14, ()),
]


@pytest.mark.parametrize(("args", "code", "also_slow"), QUICK_PATHS,
                         ids=[" ".join(p[0]) for p in QUICK_PATHS])
def test_quick_commands_import_no_slow_module(args: list[str], code: int,
                                              also_slow: tuple[str, ...]) -> None:
    argv = ["kvmops", *args[:2], "--connect", "test:///default", *args[2:]]
    script = (f"import sys\nsys.argv = {argv!r}\nfrom kvmops.cli import main\n"
              "try:\n    main.run()\nexcept SystemExit as exit:\n"
              "    print('exit', exit.code, file=sys.stderr)\n")
    proc = subprocess.run(
        [sys.executable, "-c", f"{script}\nimport json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=False)
    assert f"exit {code}\n" in proc.stderr, proc.stderr
    modules = set(json.loads(proc.stdout.splitlines()[-1]))
    loaded = [m for m in (*SLOW_FOR_ALL, *also_slow) if _loaded(modules, m)]
    assert not loaded, f"kvmops {' '.join(args)} imported {loaded}"


def test_plain_table_and_fields_keep_every_value_whole(
        capsys: pytest.CaptureFixture[str]) -> None:
    from kvmops.cli.output import print_fields, print_table

    long = "/var/lib/kvmops/images/" + "x" * 150 + ".qcow2"
    print_table(["Name", "Source"], [("web1", long), ("[bold]db", None)])
    print_fields([("Name", "web1"), ("Guest agent", "answering"), ("VNC", None)])
    print_table(["Check", "Detail"], [("qemu", "old\n→ upgrade it"), ("disk", "ok")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Name", "Source"]
    assert set(lines[1]) == {"-"} and len(lines[1]) >= len(lines[2])
    assert lines[2].split() == ["web1", long]  # never folded or cut
    assert lines[3].split() == ["[bold]db"]  # markup is text
    assert lines[2].index(long) == lines[0].index("Source")  # columns line up
    assert lines[4:7] == ["Name:        web1", "Guest agent: answering", "VNC:"]
    assert lines[9:] == [" qemu    old", "         → upgrade it", " disk    ok"]


def test_records_dump_as_the_pydantic_models_did() -> None:
    from pathlib import Path

    from kvmops.host.accel import Accelerator
    from kvmops.vm.lifecycle import CreateRequest, DiskInfo, DiskRequest

    req = CreateRequest(name="web1", memory=256 << 20, disks=[DiskRequest(size=1 << 26)],
                        kernel=Path("/boot/vmlinuz"), accelerator=Accelerator.TCG)
    dumped = req.model_dump(mode="json")
    assert dumped["kernel"] == "/boot/vmlinuz" and dumped["accelerator"] == "tcg"
    assert dumped["disks"] == [{"size": 1 << 26, "path": None, "fmt": None, "bus": "virtio",
                               "pool": None, "volume": None}]
    assert req.model_dump()["kernel"] == Path("/boot/vmlinuz")
    copy = req.model_copy(update={"vcpus": 2})
    assert (copy.vcpus, req.vcpus, copy.name) == (2, 1, "web1")
    disk = DiskInfo(target="vda", source=None, format="qcow2", bus="virtio", device="disk")
    assert disk.model_dump(exclude={"alias"}) == {
        "target": "vda", "source": None, "format": "qcow2", "bus": "virtio", "device": "disk",
        "node_name": None}


@pytest.mark.parametrize(("xml", "expected"), [
    ("<domain type='kvm' id='3'><name>a</name></domain>", "kvm"),
    ('<?xml version="1.0"?>\n<domain type="qemu"><name>a</name></domain>', "qemu"),
    ("<domain><name>a</name></domain>", "qemu"),
    ("<network type='kvm'/>", "qemu"),
    ("not xml", "qemu"),
])
def test_vm_list_reads_the_accelerator_from_the_root_element(xml: str, expected: str) -> None:
    from kvmops.services.vms import domain_type

    assert domain_type(xml) == expected


@pytest.mark.parametrize("args", [
    ["vm", "list", "--help"], ["vm", "list", "extra"], ["vm", "list", "--connect"],
    ["vm", "list", "-x"], ["vm", "info"], ["vm", "info", "a", "b"], ["vm", "info", "--json"],
    ["vm", "start", "a"], ["guest", "exec", "a", "/bin/true"], ["guest", "exec", "a", "--"],
    ["guest", "exec", "--", "/bin/true"], ["guest", "exec", "a", "--stdin", "-", "--", "x"],
    ["guest", "exec", "a", "--timeout", "soon", "--", "x"], ["--version"], ["vm"],
])
def test_other_command_lines_go_to_typer(args: list[str]) -> None:
    from kvmops.cli.quick import quick_command

    assert quick_command(args) is None


def test_quick_forms_parse_as_typer_would(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.cli import quick

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(quick, "vm_list", lambda *a: calls.append(("list", *a)))
    monkeypatch.setattr(quick, "vm_info", lambda *a: calls.append(("info", *a)))
    monkeypatch.setattr(quick, "guest_exec",
                        lambda args, **kw: calls.append(("exec", args, kw)) or 3)
    monkeypatch.setenv("KVMOPS_URI", "test:///env")
    for args in (["vm", "list"], ["vm", "list", "--json", "-c", "test:///x"],
                 ["vm", "info", "--connect=test:///y", "web1", "--json"],
                 ["guest", "exec", "web1", "--timeout", "5", "--", "ls", "--timeout", "-l"]):
        command = quick.quick_command(args)
        assert command is not None, args
        assert command() == (3 if args[0] == "guest" else 0)
    assert calls == [
        ("list", False, "test:///env"), ("list", True, "test:///x"),
        ("info", "web1", True, "test:///y"),
        ("exec", ["web1", "ls", "--timeout", "-l"],
         {"timeout": 5.0, "stdin": None, "socket": None, "tcp": None, "uri": "test:///env"}),
    ]

"""``kvmops sriov``: SR-IOV PFs, their VF counts, VF pools and reconcile.

PFs and VFs are read from sysfs (``KVMOPS_SYSFS_ROOT``: a simulated tree written by
``kvmops dev fake-sriov``). A VF is given to a VM with ``kvmops vm nic add VM --vf-pool
POOL``.
"""

from __future__ import annotations

import typer

from kvmops.cli.common import JsonOption, UriOption, connect
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.services import sriov as service
from kvmops.services.caller import Caller

app = typer.Typer(help="SR-IOV: PFs, VF counts, VF pools for VM NICs, reconcile.",
                  no_args_is_help=True)
pf_app = typer.Typer(help="SR-IOV physical functions (PFs) and their VF counts.",
                     no_args_is_help=True)
pool_app = typer.Typer(help="VF pools: the VFs of one or more PFs, one per VM NIC.",
                       no_args_is_help=True)
app.add_typer(pf_app, name="pf")
app.add_typer(pool_app, name="pool")

PoolArg = typer.Argument(..., help="Pool name.")


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


@pf_app.command("list")
def pf_list_cmd(json_out: bool = JsonOption) -> None:
    """SR-IOV capable devices: driver, link, VFs now/at most, pool, VFs allocated."""
    found = service.list_pfs(Caller.local())
    if json_out:
        print_json(found)
        return
    print_table(["PF", "PCI", "Driver", "Link", "Speed", "VFs", "Max VFs", "Allocated",
                 "Pool", "Rate range (Mbps)"],
                [(p.name, p.pci, _dash(p.driver), p.link, _dash(p.speed), p.numvfs,
                  p.totalvfs, p.allocated, _dash(p.pool), _dash(p.rate_range))
                 for p in found])


@pf_app.command("set-vfs")
def pf_set_vfs_cmd(
    pf: str = typer.Argument(..., help="PF (network interface) name."),
    count: int = typer.Argument(..., help="VF count, 0..sriov_totalvfs."),
    json_out: bool = JsonOption,
) -> None:
    """Make COUNT VFs on PF (kept and set again by 'sriov reconcile' after a reboot)."""
    result = service.set_vfs(Caller.local(), pf, count)
    if json_out:
        print_json(result)
        return
    info(f"PF '{result.name}' has {result.numvfs} VFs (at most {result.totalvfs})")


@pool_app.command("create")
def pool_create_cmd(
    name: str = PoolArg,
    pf: list[str] = typer.Option(..., "--pf", help="A PF whose VFs the pool hands out "
                                 "(repeatable)."),
    json_out: bool = JsonOption,
) -> None:
    """Create a pool of the VFs of one or more PFs (which must have VFs now)."""
    pool = service.create_pool(Caller.local(), name, pf)
    if json_out:
        print_json(pool)
        return
    info(f"SR-IOV pool '{pool.name}' created: {pool.vfs} VFs on PF(s) {', '.join(pool.pfs)}")


@pool_app.command("list")
def pool_list_cmd(json_out: bool = JsonOption) -> None:
    """Every pool with its PFs and VF counts."""
    found = service.list_pools(Caller.local())
    if json_out:
        print_json(found)
        return
    print_table(["Pool", "PFs", "VFs", "Allocated", "Free", "Missing PFs"],
                [(p.name, ", ".join(p.pfs), p.vfs, p.allocated, p.free,
                  ", ".join(p.missing_pfs) or "-") for p in found])


@pool_app.command("info")
def pool_info_cmd(name: str = PoolArg, json_out: bool = JsonOption) -> None:
    """One pool and its VM <-> VF mapping."""
    pool = service.pool_info(Caller.local(), name)
    if json_out:
        print_json(pool)
        return
    print_fields([("Name", pool.name), ("PFs", ", ".join(pool.pfs)), ("VFs", pool.vfs),
                  ("Allocated", pool.allocated), ("Free", pool.free),
                  ("Missing PFs", ", ".join(pool.missing_pfs) or "-"),
                  ("Created by", pool.created_by)])
    if pool.allocations:
        print_table(["PF", "VF", "PCI", "VM", "MAC", "VLAN", "Rate (Mbps)", "Spoofchk",
                     "Trust"],
                    [(a.pf, a.vf, a.pci, a.vm, a.mac, a.vlan or "-", a.max_tx_rate or "-",
                      "on" if a.spoofchk else "off", "on" if a.trust else "off")
                     for a in pool.allocations])


@pool_app.command("xml")
def pool_xml_cmd(
    name: str = PoolArg,
    method: str = typer.Option("interface", "--method",
                               help="interface (<interface type='hostdev'>, what kvmops "
                                    "attaches), hostdev (plain <hostdev>) or network (a "
                                    "libvirt hostdev network over the pool's PFs)."),
) -> None:
    """Print the libvirt XML of a free VF (or of the pool as a libvirt network)."""
    print(service.pool_xml(Caller.local(), name, method))


@pool_app.command("delete")
def pool_delete_cmd(name: str = PoolArg) -> None:
    """Delete a pool (refused while a VF of it is allocated, naming the VMs)."""
    service.delete_pool(Caller.local(), name)
    info(f"SR-IOV pool '{name}' deleted")


@app.command("reconcile")
def reconcile_cmd(
    boot: bool = typer.Option(False, "--boot",
                              help="At boot, before libvirtd starts the VMs: only make the "
                                   "VFs again and set their settings (no libvirt needed; "
                                   "releases nothing)."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
) -> None:
    """Reset VFs a crash left configured, release allocations whose VM is gone, set lost
    VF settings and counts again."""
    if boot:
        report = service.reconcile(Caller.local(), None)
    else:
        with connect(uri) as host:
            report = service.reconcile(Caller.local(), host)
    if json_out:
        print_json(report)
        return
    info(f"released {len(report.released)} allocation(s)"
         + "".join(f"\n  {a.vm}: {a.pf} vf{a.vf} ({a.mac})" for a in report.released))
    info(f"reset {len(report.reset)} unallocated VF(s): {', '.join(report.reset) or '-'}")
    info(f"set again {len(report.reapplied)} VF(s): {', '.join(report.reapplied) or '-'}")
    info(f"VF counts restored: {', '.join(report.numvfs_restored) or '-'}")

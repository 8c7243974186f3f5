"""``kvmops net create NAME --mode bridge --uplink DEV`` and ``net rollback BRIDGE``: a host
bridge over an uplink, checked and rolled back the way ``netplan try`` does
(:mod:`kvmops.services.bridges`). :mod:`kvmops.cli.net` hands these over."""

from __future__ import annotations

import contextlib
import select
import sys
from typing import Any

from kvmops.cli.common import connect
from kvmops.cli.output import info, print_json, warn
from kvmops.errors import ValidationError
from kvmops.services import bridges as service
from kvmops.services.caller import Caller


def _confirm(seconds: float) -> bool:
    """Ask on the terminal; True only for an Enter (or 'y') within ``seconds``. No
    terminal, end of input or silence is a no."""
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP follows)
        sys.stdout.write(f"Keep this configuration? Press Enter within {seconds:g} s, or it "
                         "is rolled back.\n")
        sys.stdout.flush()
    try:
        ready, _, _ = select.select([sys.stdin], [], [], seconds)
    except (OSError, ValueError):
        return False
    if not ready:
        return False
    line = sys.stdin.readline()
    if not line:  # end of input: nobody there to confirm
        return False
    return line.strip().lower() in ("", "y", "yes")


def create(name: str, *, mode: str, uplink: str | None, bridge: str | None, verify: str | None,
           verify_timeout: float, confirm_timeout: float | None, dry_run: bool,
           no_define: bool, autostart: bool, json_out: bool, uri: str | None,
           conflicting: dict[str, Any]) -> None:
    """``net create NAME --mode bridge --uplink DEV``."""
    if uplink is None:
        raise ValidationError("--verify, --confirm-timeout, --dry-run and --no-define are "
                              "for a bridge over --uplink",
                              hint="add --mode bridge --uplink DEV, or leave them out")
    if mode != "bridge":
        raise ValidationError(f"--uplink is for --mode bridge, not --mode {mode}",
                              hint="add --mode bridge (kvmops creates the host bridge over "
                                   "the uplink)")
    for option, value in conflicting.items():
        if value not in (None, False):
            raise ValidationError(f"{option} is not for a bridge over --uplink",
                                  hint="libvirt owns no address or DHCP on a host bridge: "
                                       f"leave {option} out")
    report = (lambda _line: None) if json_out else info

    def run(host: Any) -> service.BridgeResult:
        return service.create_over_uplink(
            Caller.local(), name, uplink, bridge=bridge, verify=verify,
            verify_timeout=verify_timeout, confirm_timeout=confirm_timeout,
            confirm=_confirm, dry_run=dry_run, host=host, autostart=autostart, report=report)

    if no_define or dry_run:
        result = run(None)
    else:
        with connect(uri) as host:
            result = run(host)
    if json_out:
        print_json(result)
        return
    if result.dry_run:
        info(f"dry run: nothing changed (bridge '{result.bridge}' over '{result.uplink}')")
        return
    for note in result.notes:
        warn(note)
    where = (f"; libvirt network '{result.name}' defined on it" if result.defined
             else "; no libvirt network defined (--no-define)")
    info(f"bridge '{result.bridge}' created over '{result.uplink}' and checked{where}")
    info("this is the running state only: make it permanent in the host's network "
         "configuration (ifupdown, netplan, NetworkManager)")


def rollback(bridge: str, json_out: bool) -> None:
    """``net rollback BRIDGE``."""
    result = service.rollback(Caller.local(), bridge)
    if json_out:
        print_json(result)
        return
    if result.stale:
        info(f"the rollback record of bridge '{bridge}' is from before the last reboot: "
             "nothing to restore (the change did not survive it); record removed")
        return
    if result.kind == "unbridge":
        info(f"bridge '{bridge}' over '{result.uplink}' made again as it was "
             f"({len(result.steps)} steps)")
        return
    info(f"bridge '{bridge}' removed and '{result.uplink}' restored "
         f"({len(result.steps)} steps)")


def unbridge(bridge: str, *, verify: str | None, verify_timeout: float,
             confirm_timeout: float | None, dry_run: bool, json_out: bool,
             uri: str | None) -> None:
    """``net unbridge BRIDGE``: libvirt is asked whether a network still names the bridge."""
    report = (lambda _line: None) if json_out else info
    with connect(uri) as host:
        result = service.remove_bridge(
            Caller.local(), bridge, verify=verify, verify_timeout=verify_timeout,
            confirm_timeout=confirm_timeout, confirm=_confirm, dry_run=dry_run, host=host,
            report=report)
    if json_out:
        print_json(result)
        return
    if result.dry_run:
        info(f"dry run: nothing changed (bridge '{result.bridge}', port '{result.port}')")
        return
    for note in result.notes:
        warn(note)
    info(f"bridge '{result.bridge}' removed; its addresses and routes are on "
         f"'{result.port}' again (checked)")
    info("this is the running state only: change the host's network configuration too")

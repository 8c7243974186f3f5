"""Placement and evacuation in the web UI (issue 12: a feature of the CLI and the API is
reachable from the web UI too). The create page's Host select: "auto" offers every
host's networks and, with a network only the second host has, places the VM there and
says why (every host's verdict) with a link to the VM page on that host; a named host
creates it there and opens its page. The host page's Evacuate dialog shows the dry
run's plan first (the VM, its target and why; shut-off VMs staying), then moves the VM
with the job's progress and the per-VM report. Nothing boots: the moved VM is started
paused (a paused VM migrates like a running one, without a guest to boot)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from kvmops.config import settings
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import NsHost, second_host

H2 = "wph2"
NETWORK = f"{SESSION_PREFIX}wpnet"
OPERATOR = ("wpop", "operator", "placement-op-1")
PLACED = f"{SESSION_PREFIX}wpauto"
MOVED = f"{SESSION_PREFIX}wpmove"
WAIT_MS = 300_000


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}wp") as host:
        made = host.run_cli("net", "create", NETWORK, "--mode", "isolated",
                            "--ipv4", "192.168.238.1/24")
        assert made.code == 0, made.stderr
        yield host  # its VMs and network go with it


def _names(uri: str | None, active_only: bool = False) -> list[str]:
    conn = libvirt.open(uri)
    try:
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0
        return [dom.name() for dom in conn.listAllDomains(flags)]
    finally:
        conn.close()


def _fill_create(page: Any, name: str, guest: GuestImage) -> None:
    page.fill("input[name=name]", name)
    page.fill("input[name=memory]", "128M")
    page.fill("input[name=disk_size]", "")  # no disk
    page.fill("input[name=kernel]", str(guest.kernel))
    page.fill("input[name=initrd]", str(guest.initrd))
    page.uncheck("input[name=start]")


def test_create_host_select_and_evacuate_dialog(h2: NsHost, tiny_guest: GuestImage,
                                                host: Host) -> None:
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    guest_dir = str(settings().cache_dir / "guest")
    try:
        with web_server("kvmops-webplace-", [OPERATOR], "--allow-dir", guest_dir,
                        extra_env={"KVMOPS_VCPU_RATIO": "64"}) as server, \
                chromium_page() as page:
            added = run_cli("host", "add", H2, h2.uri, env={"KVMOPS_DB": server.db})
            assert added.code == 0, added.stderr
            log_in(page, server.url, OPERATOR[0], OPERATOR[2])

            # Host auto: every host's networks offered; the VM goes where its network is
            page.goto(server.url + "/create")
            hosts = page.locator("#create-host option")
            assert hosts.all_inner_texts() == ["local", H2, "auto (place it)"]
            page.select_option("#create-host", "auto")
            option = page.locator(f"#create-network option[value='{NETWORK}']")
            option.wait_for(state="attached")
            assert option.inner_text() == f"{NETWORK} ({H2})"
            page.select_option("#create-network", NETWORK)
            _fill_create(page, PLACED, tiny_guest)
            page.click("#create-vm button[type=submit]")
            placed = page.locator("#placed")
            placed.wait_for(state="visible", timeout=WAIT_MS)
            assert placed.locator("[data-field=host]").inner_text() == H2
            assert placed.locator("[data-field=reason]").inner_text().startswith(
                "the only host that fits: ")
            local = placed.locator("li[data-host=local]")
            assert local.get_attribute("data-fits") == "false"
            assert local.inner_text() == f"local: rejected: network {NETWORK} not present"
            there = placed.locator(f"li[data-host={H2}]")
            assert there.get_attribute("data-fits") == "true"
            assert there.inner_text().startswith(f"{H2}: fits: ")
            assert PLACED in _names(h2.uri) and PLACED not in _names(settings().uri)
            link = placed.locator("[data-field=link]")
            assert link.get_attribute("href") == f"/vms/{PLACED}?host={H2}"
            # nowhere to go (the name is taken there, the network missing here): the
            # refusal names every host's reason and stays on the page
            page.click("#create-vm button[type=submit]")
            refused = page.locator("#create-vm [data-field=status].error-text")
            refused.wait_for(timeout=WAIT_MS)
            assert placed.is_hidden()
            text = refused.inner_text()
            assert text.startswith(f"no host can take VM '{PLACED}': "), text
            assert f"local: rejected: network {NETWORK} not present" in text, text
            assert f"{H2}: rejected: a VM named '{PLACED}' exists there" in text, text
            page.goto(f"{server.url}/vms/{PLACED}?host={H2}")  # the placed panel's link
            assert page.locator(f"[data-vm-page='{PLACED}']").count() == 1

            # A named host: created there, its page opened with ?host=
            page.goto(server.url + "/create")
            page.select_option("#create-host", H2)
            _fill_create(page, MOVED, tiny_guest)
            page.click("#create-vm button[type=submit]")
            page.wait_for_url(f"{server.url}/vms/{MOVED}?host={H2}", timeout=WAIT_MS)
            assert MOVED in _names(h2.uri) and MOVED not in _names(settings().uri)

            # The host page: start it paused, then the Evacuate dialog's plan
            page.goto(f"{server.url}/hosts/{H2}")
            row = page.locator(f"#vm-rows tr[data-vm='{MOVED}']")
            row.locator("button[data-action=start-paused]").click()
            page.locator(".toast.ok").filter(has_text="started (paused)").wait_for()
            page.click("#evacuate-btn")
            item = page.locator(f"#evacuate-plan li[data-vm='{MOVED}']")
            item.wait_for(timeout=WAIT_MS)
            assert item.get_attribute("data-status") == "planned", item.inner_text()
            assert item.get_attribute("data-target") == "local"
            assert item.inner_text().startswith(f"{MOVED} -> local: planned (")
            staying = page.locator("#evacuate-plan li").filter(has_text="not running, staying")
            assert PLACED in staying.inner_text()
            assert page.inner_text("#evacuate-plan-state") == "plan: 1 of 1 running VM(s) can move"
            assert MOVED in _names(h2.uri, active_only=True)  # the plan changed nothing

            # Evacuate: the job's progress, then the report; the VM runs only here now
            page.click("#evacuate-go")
            moved = page.locator(f"#evacuate-report li[data-vm='{MOVED}'][data-status=moved]")
            moved.wait_for(timeout=WAIT_MS)
            assert moved.inner_text().startswith(f"{MOVED} -> local: moved in ")
            assert page.locator("#evacuate-status").get_attribute("data-state") == "succeeded"
            assert page.inner_text("#evacuate-status [data-field=message]") == \
                "1 of 1 VM(s) moved"
            assert MOVED in _names(settings().uri, active_only=True)
            assert MOVED not in _names(h2.uri)
    finally:
        for name in (PLACED, MOVED):  # on this machine if they got here; h2's go with h2
            remove_vm(host, name)

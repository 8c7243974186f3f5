"""The VM page's NIC editor end to end: a real ``kvmops serve`` and Debian's chromium
driven by Playwright. An operator adds a NIC on a shut-off VM through the form (network
chosen from the libvirt networks), sees it in the table, sets its link down and removes
it -- each checked in the VM's definition; a viewer sees the NICs without controls.

The test network and VMs carry SESSION_PREFIX; the network is 192.168.236.0/24 (no other
test uses it) and is removed even when a test fails."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

pytest.importorskip("playwright.sync_api")

OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}nicop"[:60], "nic-operator-1"
VIEWER, VIEWER_PASSWORD = f"{SESSION_PREFIX}nicview"[:60], "nic-viewer-1"
NET = f"{SESSION_PREFIX}webnic"
MAC = "52:54:00:a7:36:01"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")


@pytest.fixture(scope="module")
def web() -> Iterator[ApiServer]:
    with web_server("kvmops-webnic-", [(OPERATOR, "operator", OPERATOR_PASSWORD),
                                       (VIEWER, "viewer", VIEWER_PASSWORD)]) as server:
        yield server


@pytest.fixture
def network(host: Host) -> Iterator[str]:
    try:
        created = run_cli("net", "create", NET, "--mode", "isolated",
                          "--ipv4", "192.168.236.1/24")
        assert created.code == 0, created.stderr
        yield NET
    finally:
        with contextlib.suppress(Exception):
            host_networks.stop(host, NET)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, NET)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with chromium_page() as page:
        yield page


def definition(host: Host, vm: str) -> str:
    xml: str = host.conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return xml


def test_operator_adds_links_down_and_removes_a_nic(web: ApiServer, browser_page: Any,
                                                    host: Host, network: str,
                                                    fresh_vm: str) -> None:
    page, vm = browser_page, fresh_vm
    assert MAC not in definition(host, vm)
    log_in(page, web.url, OPERATOR, OPERATOR_PASSWORD)
    page.goto(f"{web.url}/vms/{vm}")
    page.locator("details:has(#nic-add-form) > summary").click()
    form = page.locator("#nic-add-form")
    form.locator(f"select[name=network] option[value='{network}']").wait_for(state="attached")
    form.locator("select[name=network]").select_option(network)
    form.locator("select[name=model]").select_option("e1000")
    form.locator("input[name=mac]").fill(MAC)
    form.locator("button[type=submit]").click()

    row = page.locator(f"#nic-rows tr[data-nic='{MAC}']")
    row.wait_for()
    text = row.inner_text()
    assert network in text and "e1000" in text and "network" in text
    assert row.locator("[data-field=link]").inner_text() == "up"
    xml = definition(host, vm)
    assert MAC in xml and f"network='{network}'" in xml

    row.locator("button[data-link=down]").click()
    row.locator("button[data-link=up]").wait_for()
    assert row.locator("[data-field=link]").inner_text() == "down"
    assert "<link state='down'/>" in definition(host, vm)

    # Bandwidth through the change form (the VM is shut off: its definition changes);
    # a VLAN on a plain network is refused with the service's one line.
    page.locator("details:has(#nic-qos-form) > summary").click()
    qos = page.locator("#nic-qos-form")
    qos.locator("select[name=mac]").select_option(MAC)
    qos.locator("input[name=outbound]").fill("10mbit,20mbit,256")
    qos.locator("button[type=submit]").click()
    row.locator("[data-field=qos]", has_text="out 1220,2441,256").wait_for()
    assert "<outbound average='1220' peak='2441' burst='256'/>" in definition(host, vm)
    qos.locator("select[name=mac]").select_option(MAC)
    qos.locator("input[name=vlan]").fill("10")
    qos.locator("button[type=submit]").click()
    toast = page.locator(".toast", has_text="not an Open vSwitch or SR-IOV network")
    toast.wait_for()
    assert "<vlan" not in definition(host, vm)

    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-remove]").click()
    row.wait_for(state="detached")
    assert "No network interfaces." in page.locator("#nic-rows").inner_text()
    assert MAC not in definition(host, vm)


def test_viewer_sees_nics_without_controls(web: ApiServer, browser_page: Any, network: str,
                                           vm_factory: Callable[..., str]) -> None:
    vm = vm_factory("--nic", f"network={network},mac={MAC[:-2]}02")
    page = browser_page
    log_in(page, web.url, VIEWER, VIEWER_PASSWORD)
    page.goto(f"{web.url}/vms/{vm}")
    page.wait_for_load_state("networkidle")
    table = page.locator("#nic-rows")
    assert f"{MAC[:-2]}02" in table.inner_text() and network in table.inner_text()
    for control in ("#nic-add-form", "button[data-link]", "button[data-remove]"):
        assert page.locator(control).count() == 0, control

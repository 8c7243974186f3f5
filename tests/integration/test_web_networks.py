"""The web UI's Networks page end to end: a real ``kvmops serve`` and Debian's chromium
driven by Playwright. An operator creates an isolated network through the form, sees it
active in the list and on its page (leases view), is refused deleting it while a VM's
definition uses it (the one-line error names the VM), then deletes it; a viewer reads
the page without create or change controls.

Test networks and VMs carry SESSION_PREFIX and the 192.168.249.0/24, fd00:249::/64
prefixes, and are removed even when a test fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

pytest.importorskip("playwright.sync_api")

OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}netop"[:60], "net-operator-1"
VIEWER, VIEWER_PASSWORD = f"{SESSION_PREFIX}netview"[:60], "net-viewer-1"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")


def remove_network(host: Host, name: str) -> None:
    """Stop and undefine a test network; never fails."""
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)


@pytest.fixture(scope="module")
def web() -> Iterator[ApiServer]:
    with web_server("kvmops-webnet-", [(OPERATOR, "operator", OPERATOR_PASSWORD),
                                       (VIEWER, "viewer", VIEWER_PASSWORD)]) as server:
        yield server


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with chromium_page() as page:
        yield page


@pytest.fixture
def net_names(host: Host) -> Iterator[list[str]]:
    """Names of networks the test may create: removed afterwards, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        remove_network(host, name)


def user_vm_xml(name: str, network: str) -> str:
    """A VM definition (never started) with one interface on ``network``."""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
<devices><interface type='network'><source network='{network}'/><model type='virtio'/>
</interface></devices></domain>"""


def test_operator_creates_refused_delete_then_deletes(web: ApiServer, browser_page: Any,
                                                      host: Host, net_names: list[str]
                                                      ) -> None:
    page = browser_page
    name = f"{SESSION_PREFIX}webnet"
    net_names.append(name)
    vm = f"{SESSION_PREFIX}webnet-user"
    log_in(page, web.url, OPERATOR, OPERATOR_PASSWORD)
    page.click("nav a[href='/networks']")
    page.wait_for_url(f"{web.url}/networks")
    form = page.locator("#net-create")
    form.locator("input[name=name]").fill(name)
    form.locator("select[name=mode]").select_option("isolated")
    form.locator("input[name=ipv4]").fill("192.168.249.1/24")
    form.locator("input[name=dhcp]").fill("192.168.249.10-192.168.249.50")
    form.locator("input[name=ipv6]").fill("fd00:249::1/64")
    form.locator("select[name=ipv6_mode]").select_option("slaac")
    form.locator("button[type=submit]").click()
    row = page.locator(f"#net-rows tr[data-net='{name}']")
    row.wait_for()
    assert row.get_attribute("data-active") == "yes"
    assert row.locator("[data-field=mode]").inner_text() == "isolated"
    assert row.locator("[data-field=active]").inner_text() == "active"
    assert "192.168.249.1/24" in row.inner_text() and "fd00:249::1/64" in row.inner_text()
    state = host_networks.network(host, name)
    assert state.active and state.persistent and not state.autostart

    # the leases view of the network's own page (a fresh network has none)
    row.locator(f"a[href='/networks/{name}']").click()
    page.wait_for_url(f"{web.url}/networks/{name}")
    assert page.locator("#lease-table").count() == 1
    assert "No leases." in page.locator("#lease-table").inner_text()
    page.goto(f"{web.url}/networks")

    # a VM definition uses it: delete is refused, the one line naming the VM
    try:
        host.conn.defineXML(user_vm_xml(vm, name))
        page.reload()
        assert vm in row.locator("[data-field=used-by]").inner_text()
        page.once("dialog", lambda dialog: dialog.accept())
        row.locator("button[data-net-action=delete]").click()
        error = page.locator("#net-error")
        error.wait_for()
        text = error.inner_text()
        assert "cannot delete network" in text and vm in text and "\n" not in text
        assert host_networks.exists(host, name)
    finally:
        with contextlib.suppress(Exception):
            host.conn.lookupByName(vm).undefine()

    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-net-action=delete]").click()
    row.wait_for(state="detached")
    assert not host_networks.exists(host, name)


def test_viewer_sees_no_network_controls(web: ApiServer, browser_page: Any, host: Host,
                                         net_names: list[str]) -> None:
    name = f"{SESSION_PREFIX}webnet-ro"
    net_names.append(name)
    created = run_cli("net", "create", name, "--mode", "isolated", "--ipv4",
                      "192.168.249.1/24")
    assert created.code == 0, created.stderr
    page = browser_page
    log_in(page, web.url, VIEWER, VIEWER_PASSWORD)
    for path in ("/networks", f"/networks/{name}"):
        page.goto(web.url + path)
        page.wait_for_load_state("networkidle")
        assert name in page.locator("main").inner_text()
        for control in ("#net-create", "button[data-net-action]"):
            assert page.locator(control).count() == 0, (path, control)
    assert page.locator("#lease-table").count() == 1
    for missing, said in ((f"{SESSION_PREFIX}no-such-net", "not found"),
                          ("bad%20name", "no network named 'bad name'")):
        response = page.goto(f"{web.url}/networks/{missing}")
        assert response is not None and response.status == 404, missing
        assert said in page.locator("main").inner_text(), missing

"""The web UI's Networks page end to end: a real ``kvmops serve`` and Debian's chromium
driven by Playwright. An operator creates an isolated network through the form, sees it
active in the list and on its page (leases view), is refused deleting it while a VM's
definition uses it (the one-line error names the VM), then deletes it; a viewer reads
the page without create or change controls.

Test networks and VMs carry SESSION_PREFIX and the 192.168.249.0/24, fd00:249::/64
prefixes, and are removed even when a test fails."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, start_server

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
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
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-webnet-"))
    db = f"sqlite:///{workdir}/kvmops.sqlite"
    server = start_server(db, workdir)
    try:
        for name, role, secret in ((OPERATOR, "operator", OPERATOR_PASSWORD),
                                   (VIEWER, "viewer", VIEWER_PASSWORD)):
            added = run_cli("user", "add", name, "--role", role, "--password-stdin", "--db",
                            db, input=secret + "\n")
            assert added.code == 0, added.stderr
        yield server
    finally:
        server.stop()
        log = server.log.read_text()
        shutil.rmtree(workdir, ignore_errors=True)
        assert "Traceback" not in log, log


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(60_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not errors, errors


@pytest.fixture
def net_names(host: Host) -> Iterator[list[str]]:
    """Names of networks the test may create: removed afterwards, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        remove_network(host, name)


def log_in(page: Any, url: str, name: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


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

"""The web UI across hosts (issue 12): the dashboard shows every host's health (a host
that does not answer: unreachable with the reason), the VM list has a Host column and a
host filter and shows an unreachable host as a banner row while listing the others, a
VM on the second host opens with ``?host=`` and its actions act there, and the host page
shows a host's health with its VMs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmops.devguest.build import GuestImage
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.nshost import SECOND_HOST_INDEX, NsHost, defined_vm, second_host

H2 = "mwh2"
DOWN = "mwdown"  # an address of this test's own /24 that nothing answers on
ADMIN = ("mwadmin", "admin", "multihost-admin-1")


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}mw") as host:
        yield host


@pytest.fixture(scope="module")
def remote_vm(h2: NsHost, tiny_guest: GuestImage) -> Iterator[str]:
    """A VM defined on the second host only (started paused: nothing boots)."""
    with defined_vm(h2.uri, f"{SESSION_PREFIX}mwvm", str(tiny_guest.kernel),
                    str(tiny_guest.initrd)) as name:
        yield name


def test_hosts_on_the_dashboard_vm_list_vm_page_and_host_page(
        h2: NsHost, remote_vm: str) -> None:
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    with web_server("kvmops-webmulti-", [ADMIN]) as server, chromium_page() as page:
        for name, uri, extra in ((H2, h2.uri, ()),
                                 (DOWN, f"qemu+tcp://10.250.{SECOND_HOST_INDEX}.9/system",
                                  ("--no-check",))):
            added = run_cli("host", "add", name, uri, *extra, env={"KVMOPS_DB": server.db})
            assert added.code == 0, added.stderr
        log_in(page, server.url, ADMIN[0], ADMIN[2])

        # the dashboard: every host's health
        page.goto(server.url + "/")
        health = page.locator("#host-health")
        local = health.locator("tr[data-host=local]")
        assert local.get_attribute("data-reachable") == "true"
        there = health.locator(f"tr[data-host={H2}]")
        assert there.get_attribute("data-reachable") == "true"
        assert there.locator("[data-field=vms_defined]").inner_text() == "1"
        assert there.locator("[data-field=vms_running]").inner_text() == "0"
        assert there.locator("[data-field=accelerator]").inner_text() in ("kvm", "tcg")
        assert "MiB" in there.locator("[data-field=memory_free]").inner_text() or \
            "GiB" in there.locator("[data-field=memory_free]").inner_text()
        down = health.locator(f"tr[data-host={DOWN}]")
        assert down.get_attribute("data-reachable") == "false"
        assert "unreachable" in down.inner_text()

        # the VM list: every host, a Host column, the unreachable one as a banner row
        page.goto(server.url + "/vms")
        row = page.locator(f"#vm-rows tr[data-vm='{remote_vm}'][data-host={H2}]")
        assert row.locator("[data-field=host]").inner_text() == H2
        assert row.locator("[data-field=state]").inner_text() == "shut off"
        banner = page.locator(f"#vm-rows tr[data-unreachable={DOWN}]")
        assert banner.inner_text().startswith(f"{DOWN} unreachable: "), banner.inner_text()
        options = page.locator("#host-filter option").all_inner_texts()
        assert options == ["All hosts", "local", DOWN, H2], options  # local, then by name

        # the filter: one host's VMs only
        page.select_option("#host-filter", H2)
        page.wait_for_url(f"{server.url}/vms?host={H2}")
        hosts = {tr.get_attribute("data-host")
                 for tr in page.locator("#vm-rows tr[data-vm]").all()}
        assert hosts == {H2}, hosts
        assert page.locator("#vm-rows tr[data-unreachable]").count() == 0

        # an action from the list acts on the VM's host
        row = page.locator(f"#vm-rows tr[data-vm='{remote_vm}']")
        row.locator("button[data-action=start-paused]").click()
        page.locator(".toast.ok").filter(has_text="started (paused)").wait_for()

        # the VM page on its host: its state, links and actions stay there
        row.locator(f"a[href='/vms/{remote_vm}?host={H2}']").click()
        page.wait_for_url(f"{server.url}/vms/{remote_vm}?host={H2}")
        head = page.locator(f"[data-vm-page='{remote_vm}']")
        assert head.locator("[data-field=state]").first.inner_text() == "paused"
        assert page.locator(f"nav.tabs a[href='/vms/{remote_vm}/xml?host={H2}']").count() == 1
        page.on("dialog", lambda dialog: dialog.accept())
        head.locator("button[data-action=destroy]").click()
        page.locator(".toast.ok").filter(has_text="forced off").wait_for()
        page.goto(f"{server.url}/vms/{remote_vm}/xml?host={H2}")
        assert remote_vm in page.inner_text("main")
        page.goto(f"{server.url}/vms/{remote_vm}?host={H2}")
        assert head.locator("[data-field=state]").first.inner_text() == "shut off"
        page.goto(f"{server.url}/vms/{remote_vm}")  # not on the local host
        assert "not found" in page.inner_text("main")
        page.goto(f"{server.url}/vms/{remote_vm}/backups?host={H2}")
        assert page.locator(f"[data-vm-page='{remote_vm}']").count() == 1
        page.goto(f"{server.url}/vms/{remote_vm}/console?host={H2}")  # through this machine
        assert "not available in the web UI" in page.inner_text("main")

        # the Hosts page links to each host's page: health and its VMs
        page.goto(server.url + "/hosts")
        page.click(f"#hosts-table a[href='/hosts/{H2}']")
        page.wait_for_url(f"{server.url}/hosts/{H2}")
        assert page.inner_text("#host-state") == "reachable"
        assert page.locator(f"#vm-rows tr[data-vm='{remote_vm}'][data-host={H2}]").count() == 1
        page.goto(f"{server.url}/hosts/{DOWN}")
        assert page.inner_text("#host-state") == "unreachable"
        assert page.inner_text("#host-error").startswith(f"{DOWN} unreachable:")

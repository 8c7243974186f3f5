"""The web UI's network form makes an Open vSwitch network with its bridge: an operator
picks mode ovs, names a bridge and ticks "create the Open vSwitch bridge too"; the bridge
exists (on the datapath the kernel allows: netdev here), the network is active in the
list, and deleting the network in the UI removes the bridge again. Asking for the bridge
with another mode is refused in one line under the form.

The network carries SESSION_PREFIX, the bridge is ``kvt...``; both are removed even when
the test fails."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host import ovs
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer
from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

pytest.importorskip("playwright.sync_api")

OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}ovsop"[:60], "ovs-operator-1"
BRIDGE = f"kvt{os.getpid() % 0xFFFFFF:x}w"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")


@pytest.fixture
def network(host: Host) -> Iterator[str]:
    name = f"{SESSION_PREFIX}webovs"
    yield name
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)
    with contextlib.suppress(Exception):
        ovs.delete_bridge(BRIDGE)


def test_operator_creates_an_ovs_network_with_its_bridge(host: Host, network: str) -> None:
    with web_server("kvmops-webovs-", [(OPERATOR, "operator", OPERATOR_PASSWORD)]) as web, \
            chromium_page() as page:
        _create_and_delete(web, page, host, network)


def _create_and_delete(web: ApiServer, page: Any, host: Host, network: str) -> None:
    log_in(page, web.url, OPERATOR, OPERATOR_PASSWORD)
    page.goto(f"{web.url}/networks")
    form = page.locator("#net-create")
    form.locator("input[name=name]").fill(network)
    form.locator("select[name=mode]").select_option("isolated")
    form.locator("input[name=create_bridge]").check()
    form.locator("button[type=submit]").click()
    error = page.locator("#net-error")
    error.wait_for()
    text = error.inner_text()
    assert "--create-bridge is only for --mode ovs" in text and "\n" not in text
    assert not host_networks.exists(host, network)

    form.locator("select[name=mode]").select_option("ovs")
    form.locator("input[name=bridge]").fill(BRIDGE)
    form.locator("button[type=submit]").click()
    row = page.locator(f"#net-rows tr[data-net='{network}']")
    row.wait_for()
    assert row.get_attribute("data-active") == "yes"
    assert row.locator("[data-field=mode]").inner_text() == "ovs"
    assert BRIDGE in ovs.bridges()
    assert ovs.bridge_datapath(BRIDGE) == ("system" if ovs.kernel_datapath() else "netdev")
    assert ovs.bridge_owner(BRIDGE) == network

    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-net-action=delete]").click()
    row.wait_for(state="detached")
    assert not host_networks.exists(host, network)
    assert BRIDGE not in ovs.bridges()

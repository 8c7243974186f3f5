"""``make clean-test`` (kvmops.testing.cleanup) removes the libvirt networks an
interrupted session left: active ones are stopped and undefined, defined-only ones
undefined, transient ones stopped; a network outside the prefix is left alone.

The networks here carry a prefix of their own under SESSION_PREFIX (so that tests of
other files running in parallel keep theirs) and are removed even on failure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from kvmops.network.model import NetworkSpec
from kvmops.testing import cleanup
from tests.conftest import SESSION_PREFIX

PREFIX = f"{SESSION_PREFIX}left-"


@pytest.fixture
def leftovers(host: Host) -> Iterator[dict[str, str]]:
    names = {kind: f"{PREFIX}{kind}" for kind in ("active", "defined", "transient")}
    keep = f"{SESSION_PREFIX}kept"
    try:
        host_networks.define(host, NetworkSpec(name=names["active"]).to_xml())
        host_networks.start(host, names["active"])
        host_networks.define(host, NetworkSpec(name=names["defined"]).to_xml())
        host.conn.networkCreateXML(NetworkSpec(name=names["transient"]).to_xml())
        host_networks.define(host, NetworkSpec(name=keep).to_xml())
        yield {**names, "keep": keep}
    finally:
        for name in [*names.values(), keep]:
            with contextlib.suppress(Exception):
                host_networks.stop(host, name)
            with contextlib.suppress(Exception):
                host_networks.undefine(host, name)


def test_leftover_test_networks_are_removed(host: Host, leftovers: dict[str, str]) -> None:
    assert host_networks.network(host, leftovers["transient"]).persistent is False
    removed = cleanup.remove_test_networks(host, prefix=PREFIX)
    assert sorted(removed) == sorted(leftovers[k] for k in ("active", "defined", "transient"))
    for kind in ("active", "defined", "transient"):
        assert not host_networks.exists(host, leftovers[kind]), kind
    assert host_networks.exists(host, leftovers["keep"])


def test_prefix_outside_the_test_prefix_is_refused(host: Host) -> None:
    with pytest.raises(ValueError, match="outside the test prefix"):
        cleanup.remove_test_networks(host, prefix="default")

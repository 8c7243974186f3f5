"""The namespaced test host's tear-down (kvmops.testing.netns) refuses anything
outside the test prefix: it kills processes and deletes namespaces, so a wrong name
must never reach it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvmops.testing import netns


@pytest.mark.parametrize("call", [
    lambda: netns.remove_ns_hosts(prefix="default"),
    lambda: netns.remove_ns_host(Path("/run/libvirt")),
    lambda: netns.stop_namespace_processes(["kvmops-test-1-nsh", "h2"]),
])
def test_outside_the_test_prefix_is_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="test"):
        call()


def test_missing_namespace_has_no_processes() -> None:
    assert netns.netns_pids("kvmops-test-no-such-namespace") == []

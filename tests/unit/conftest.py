"""Unit tests share one process: each gets a fresh memory of unreachable hosts
(services.reachability), so a host that failed in one test is asked again in the next."""

from __future__ import annotations

import pytest

from kvmops.services import reachability


@pytest.fixture(autouse=True)
def fresh_reachability(monkeypatch: pytest.MonkeyPatch) -> reachability.Reachability:
    memory = reachability.Reachability()
    monkeypatch.setattr(reachability, "REACHABILITY", memory)
    return memory

"""The bridge-over-uplink use case (kvmops.services.bridges) against a fake kernel: which
host the check follows, the rollback record on disk before the first step, and a restore
after a failed step, a failed check or an interruption, with the one-line message."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import CancelledError, StateError, ValidationError
from kvmops.host import bridges as kernel
from kvmops.network.uplink import Link, Route, Step, UplinkSnapshot
from kvmops.services import bridges
from kvmops.services.caller import Caller

CALLER = Caller(name="tester", via="api")  # not audited
LINK = Link(name="eth0", kind=None, link_type="ether", mac="52:54:00:aa:bb:cc", mtu=1500,
            up=True, master=None)
SNAPSHOT = UplinkSnapshot(link=LINK, addresses=(),
                          routes=(Route("inet", "default", "192.168.233.1"),), taken_at=1.0)


@dataclass
class FakeKernel:
    """Records the steps; ``fail_at`` makes one fail, ``interrupt_at`` raises Ctrl-C."""

    record: Path
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: bool = True
    fail_at: str | None = None
    interrupt_at: str | None = None
    ran: list[str] = field(default_factory=list)
    record_seen_at_first_step: bool | None = None

    def run(self, step: Step) -> None:
        if self.record_seen_at_first_step is None:
            self.record_seen_at_first_step = self.record.exists()
        text = str(step)
        self.ran.append(text)
        if self.fail_at and self.fail_at in text:
            raise StateError(f"'{text[3:]}' failed: Operation not supported")
        if self.interrupt_at and self.interrupt_at in text:
            self.interrupt_at = None  # once: the restore replaces routes too
            raise KeyboardInterrupt

    def route_get(self, address: str) -> dict[str, Any] | None:
        bridged = any("master br0" in s for s in self.ran) and not any(
            "nomaster" in s for s in self.ran)
        route = self.routes.get(address)
        if route is None:
            return None
        return {**route, "dev": "br0"} if bridged and route["dev"] == "eth0" else route


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeKernel:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    fk = FakeKernel(record=tmp_path / "state" / "bridges" / "br0.json",
                    routes={"192.168.233.1": {"dev": "eth0"},
                            "192.168.233.50": {"dev": "eth0"},
                            "10.9.9.9": {"dev": "eth0", "gateway": "192.168.233.1"},
                            "127.0.0.1": {"dev": "lo"}})
    monkeypatch.setattr(kernel, "link", lambda name: LINK if name == "eth0" else None)
    monkeypatch.setattr(kernel, "exists",
                        lambda name: name == "eth0" or (name == "br0" and any(
                            "add name br0" in s for s in fk.ran) and not any(
                            "del dev br0" in s for s in fk.ran)))
    monkeypatch.setattr(kernel, "snapshot", lambda name: SNAPSHOT)
    monkeypatch.setattr(kernel, "run", fk.run)
    monkeypatch.setattr(kernel, "route_get", fk.route_get)
    monkeypatch.setattr(kernel, "answers", lambda address, dev, timeout: fk.answers)
    monkeypatch.setattr(bridges, "_start_guard", lambda path: (os.pipe()[1], 0))
    return fk


def _create(**kwargs: Any) -> bridges.BridgeResult:
    return bridges.create_over_uplink(CALLER, "br0", "eth0", env=kwargs.pop("env", {}),
                                      **kwargs)


# ------------------------------------------------------------------------- target
def test_the_check_follows_the_session_then_verify_then_the_gateway(fake: FakeKernel) -> None:
    on_lan = _create(dry_run=True, env={"SSH_CONNECTION": "192.168.233.50 1 192.168.233.2 22"})
    assert (on_lan.verify_source, on_lan.next_hop) == ("ssh session", "192.168.233.50")
    routed = _create(dry_run=True, env={"SSH_CLIENT": "10.9.9.9 1 22"})
    assert (routed.verify_target, routed.next_hop) == ("10.9.9.9", "192.168.233.1")
    local = _create(dry_run=True, env={"SSH_CLIENT": "127.0.0.1 1 22"})
    assert (local.verify_source, local.next_hop) == ("default gateway", "192.168.233.1")
    assert "reached through lo, not eth0" in local.notes[0]
    assert _create(dry_run=True, verify="10.9.9.9").verify_source == "--verify"
    with pytest.raises(ValidationError, match="no route to it"):
        _create(dry_run=True, verify="192.0.2.1")
    assert fake.ran == [] and not fake.record.exists()  # dry runs change nothing


# ------------------------------------------------------------------ apply, restore
def test_the_record_is_on_disk_before_the_first_step_and_gone_after_success(
        fake: FakeKernel) -> None:
    result = _create()
    assert fake.record_seen_at_first_step is True
    assert result.applied and result.verified and not fake.record.exists()
    assert fake.ran == result.plan


def test_a_failed_step_is_rolled_back_with_the_kernels_reason(fake: FakeKernel) -> None:
    fake.fail_at = "master br0"
    with pytest.raises(StateError) as err:
        _create()
    assert str(err.value).startswith("bridge 'br0' over 'eth0' failed: 'link set dev eth0 "
                                     "master br0' failed: Operation not supported; rolled "
                                     "back, eth0 is as before")
    assert fake.ran[-1] == "ip link del dev br0" and not fake.record.exists()


def test_a_failed_check_or_no_confirmation_rolls_back(fake: FakeKernel) -> None:
    fake.answers = False
    with pytest.raises(StateError, match=r"next hop 192\.168\.233\.1 did not answer"):
        _create(verify_timeout=1)
    assert "ip link del dev br0" in fake.ran and not fake.record.exists()
    fake.answers, fake.ran = True, []
    asked: list[float] = []
    with pytest.raises(StateError, match="not confirmed within 5 s") as err:
        _create(confirm_timeout=5, confirm=lambda s: asked.append(s) is not None)
    assert asked == [5] and err.value.hint and "Enter" in err.value.hint
    assert "ip link del dev br0" in fake.ran
    fake.ran = []
    assert _create(confirm_timeout=5, confirm=lambda s: True).confirmed is True


def test_an_interruption_is_rolled_back_and_said(fake: FakeKernel) -> None:
    fake.interrupt_at = "route replace"
    with pytest.raises(CancelledError, match=r"interrupted \(SIGINT\); rolled back"):
        _create()
    assert fake.ran[-1] == "ip link del dev br0" and not fake.record.exists()


def test_a_left_record_blocks_a_new_change_and_names_the_remedy(fake: FakeKernel) -> None:
    fake.record.parent.mkdir(parents=True)
    fake.record.write_text(json.dumps({"version": 1}))
    with pytest.raises(StateError, match="kvmops net rollback br0"):
        _create()
    assert bridges.pending() == ["br0"]


@pytest.mark.parametrize(("option", "value"), [("verify_timeout", 0),
                                               ("confirm_timeout", 7200)])
def test_timeouts_out_of_range_are_refused(fake: FakeKernel, option: str, value: float
                                           ) -> None:
    with pytest.raises(ValidationError, match="out of range"):
        _create(**{option: value})


def test_only_root_changes_the_host_but_anyone_sees_the_plan(
        fake: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridges.os, "geteuid", lambda: 1000)
    with pytest.raises(StateError, match="needs root"):
        _create()
    assert _create(dry_run=True).plan and fake.ran == []


def test_changes_are_audited_but_dry_runs_are_not(fake: FakeKernel,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.services import audit

    rows: list[tuple[str, str | None, int]] = []
    monkeypatch.setattr(audit, "record", lambda caller, action, target, code, **kw:
                        rows.append((action, target, code)))
    cli = Caller(name="root", role="admin", via="cli")
    bridges.create_over_uplink(cli, "br0", "eth0", dry_run=True, env={})
    assert rows == []
    fake.answers = False
    with pytest.raises(StateError):
        bridges.create_over_uplink(cli, "br0", "eth0", env={}, verify_timeout=1)
    fake.answers = True
    bridges.create_over_uplink(cli, "br0", "eth0", env={})
    assert rows == [("net.create", "br0", 5), ("net.create", "br0", 0)]


def test_an_api_client_takes_the_place_of_the_ssh_session(fake: FakeKernel) -> None:
    """From the server, the caller's session is the HTTP client: its route is checked, and
    the server's own environment (an SSH session that started it) is not the caller's."""
    ssh = {"SSH_CONNECTION": "192.168.233.50 1 192.168.233.2 22"}
    routed = _create(dry_run=True, client="10.9.9.9", env=ssh)
    assert (routed.verify_source, routed.verify_target, routed.next_hop) == (
        "api client", "10.9.9.9", "192.168.233.1")
    local = _create(dry_run=True, client="127.0.0.1", env=ssh)  # a proxy on the host
    assert (local.verify_source, local.next_hop) == ("default gateway", "192.168.233.1")
    assert local.notes[0].startswith("this API client 127.0.0.1 is reached through lo")
    assert _create(dry_run=True, client="10.9.9.9", verify="192.168.233.50"
                   ).verify_source == "--verify"
    assert fake.ran == []


@pytest.mark.parametrize(("peer", "expected"), [
    (("192.168.240.1", 5), "192.168.240.1"), (("::ffff:192.0.2.7", 5), "192.0.2.7"),
    (("fe80::1%eth0", 5), "fe80::1"), (("testclient", 5), None), (None, None)])
def test_the_api_session_address_is_the_peer(peer: tuple[str, int] | None,
                                             expected: str | None) -> None:
    from starlette.requests import Request

    from kvmops.api.routes.bridges import session_address

    assert session_address(Request({"type": "http", "client": peer, "headers": []})) == expected

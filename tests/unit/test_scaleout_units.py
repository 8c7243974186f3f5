"""Scale-out pieces without a database: NOTIFY payloads stay below PostgreSQL's limit,
and a domain event relayed by a server watching the same libvirt daemon is dropped."""

from __future__ import annotations

import socket

import pytest

from kvmops.api.context import libvirt_identity, relayed_twice
from kvmops.api.settings import ApiSettings
from kvmops.errors import ValidationError
from kvmops.store.notify import MAX_PAYLOAD, decode, encode


def test_small_event_travels_whole() -> None:
    data = {"id": "j1", "state": "succeeded", "result": {"format": "raw"}}
    assert decode(encode("a:1:x", "job", data)) == ("a:1:x", "job", data)


def test_large_event_is_cut_below_the_limit_and_says_so() -> None:
    data = {"id": "j1", "kind": "image.convert", "state": "succeeded",
            "result": {"blob": "x" * 20_000}, "message": "m" * 9000}
    payload = encode("a:1:x", "job", data)
    assert len(payload.encode()) <= MAX_PAYLOAD
    decoded = decode(payload)
    assert decoded is not None
    assert decoded[2] == {"id": "j1", "kind": "image.convert", "state": "succeeded",
                          "truncated": True}
    huge = encode("a:1:x", "job", {"id": "j2", "target": "t" * 10_000})
    assert len(huge.encode()) <= MAX_PAYLOAD
    assert decode(huge) == ("a:1:x", "job", {"id": "j2", "truncated": True})


def test_foreign_payloads_are_ignored() -> None:
    assert decode("not json") is None
    assert decode('{"o": 1, "k": "job", "d": {}}') is None
    assert decode('{"o": "a", "k": "job", "d": []}') is None


def test_relayed_domain_events_of_the_same_daemon_are_dropped() -> None:
    local = libvirt_identity("qemu:///system")
    assert local == socket.gethostname() + "qemu:///system"
    remote = libvirt_identity("qemu+tcp://10.250.0.2/system")
    assert remote == "qemu+tcp://10.250.0.2/system"
    assert relayed_twice("domain", {"vm": "v", "libvirt": local}, local)
    assert not relayed_twice("domain", {"vm": "v", "libvirt": remote}, local)
    assert not relayed_twice("job", {"id": "j", "libvirt": local}, local)


def test_job_lease_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMOPS_JOB_LEASE", raising=False)
    assert ApiSettings().job_lease == 30.0
    monkeypatch.setenv("KVMOPS_JOB_LEASE", "6")
    assert ApiSettings().job_lease == 6.0
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("KVMOPS_JOB_LEASE", bad)
        with pytest.raises(ValidationError, match="KVMOPS_JOB_LEASE"):
            ApiSettings()

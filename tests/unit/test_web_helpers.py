"""Pure helpers of the web UI: send-text key codes, backup timelines, guest
address merging, log-in redirect targets, state counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.errors import ValidationError
from kvmops.services.web_views import build_timeline, merge_addresses, newest_first
from kvmops.web.auth import login_token_ok, safe_next
from kvmops.web.keys import KEY_LEFTSHIFT, MAX_TEXT, key_for, text_to_keys
from kvmops.web.pages import state_counts

# ------------------------------------------------------------------ keys
KEY_A, KEY_Z, KEY_1, KEY_0, KEY_ENTER, KEY_SPACE, KEY_MINUS = 30, 44, 2, 11, 28, 57, 12


def test_letters_digits_and_space() -> None:
    assert key_for("a") == [KEY_A]
    assert key_for("z") == [KEY_Z]
    assert key_for("1") == [KEY_1]
    assert key_for("0") == [KEY_0]
    assert key_for(" ") == [KEY_SPACE]
    assert key_for("q") == [16] and key_for("p") == [25] and key_for("l") == [38]
    assert key_for("m") == [50]


def test_upper_case_and_symbols_hold_shift() -> None:
    assert key_for("A") == [KEY_LEFTSHIFT, KEY_A]
    assert key_for("!") == [KEY_LEFTSHIFT, KEY_1]
    assert key_for(")") == [KEY_LEFTSHIFT, KEY_0]
    assert key_for("_") == [KEY_LEFTSHIFT, KEY_MINUS]
    assert key_for("-") == [KEY_MINUS]
    assert key_for("|") == [KEY_LEFTSHIFT, 43]
    assert key_for(":") == [KEY_LEFTSHIFT, 39]


def test_every_printable_ascii_character_is_typable_with_distinct_keys() -> None:
    seen: dict[tuple[int, ...], str] = {}
    for code in range(32, 127):
        combo = tuple(key_for(chr(code)))
        assert combo not in seen, (chr(code), seen.get(combo))
        seen[combo] = chr(code)
        assert all(0 < k < 128 for k in combo)


def test_text_newlines_and_crlf() -> None:
    assert text_to_keys("ls\n") == [[38], [31], [KEY_ENTER]]
    assert text_to_keys("a\r\nb") == [[KEY_A], [KEY_ENTER], [48]]
    assert text_to_keys("\r") == [[KEY_ENTER]]
    assert text_to_keys("") == []


def test_untypable_and_too_long_text_is_refused() -> None:
    with pytest.raises(ValidationError, match="cannot type"):
        text_to_keys("grüß")
    with pytest.raises(ValidationError, match="at most"):
        text_to_keys("a" * (MAX_TEXT + 1))


# ------------------------------------------------------------------ timeline
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _disk(target: str, kind: BackupType, parent: str | None, size: int = 100) -> DiskRecord:
    return DiskRecord(target=target, file=f"{target}.qcow2", source=f"/img/{target}.qcow2",
                      type=kind, parent=parent, virtual_size=1 << 20, bytes_written=size,
                      sha256="0" * 64)


def _manifest(backup_id: str, hours: int, kind: BackupType, parent: str | None,
              disks: list[DiskRecord]) -> Manifest:
    return Manifest(id=backup_id, vm="web", time=T0 + timedelta(hours=hours), type=kind,
                    parent=parent, checkpoint=None, consistency=Consistency.CRASH, disks=disks)


def test_timeline_chains_per_disk() -> None:
    full, inc, diff = BackupType.FULL, BackupType.INCREMENTAL, BackupType.DIFFERENTIAL
    manifests = [
        _manifest("b3", 3, inc, "b2", [_disk("vda", inc, "b2"), _disk("vdb", full, None, 7)]),
        _manifest("b1", 1, full, None, [_disk("vda", full, None, 1000)]),
        _manifest("b2", 2, inc, "b1", [_disk("vda", inc, "b1", 10)]),
        _manifest("b4", 4, diff, "b1", [_disk("vda", diff, "b1"), _disk("vdb", diff, "b3")]),
        _manifest("b5", 5, full, None, [_disk("vda", full, None), _disk("vdb", full, None)]),
    ]
    vda, vdb = build_timeline(manifests)
    assert vda.target == "vda" and vdb.target == "vdb"
    assert [[p.id for p in c.points] for c in vda.chains] == [["b1", "b2", "b3", "b4"], ["b5"]]
    assert [[p.id for p in c.points] for c in vdb.chains] == [["b3", "b4"], ["b5"]]
    first = vda.chains[0]
    assert [p.type for p in first.points] == ["full", "incremental", "incremental",
                                              "differential"]
    assert first.size == 1000 + 10 + 100 + 100
    assert vdb.chains[0].points[0].type == "full"  # a disk added inside an incremental
    assert vdb.chains[0].points[0].backup_type == "incremental"
    assert vda.points == 5
    assert not any(c.broken for d in (vda, vdb) for c in d.chains)


def test_timeline_marks_a_chain_whose_parent_is_gone() -> None:
    inc = BackupType.INCREMENTAL
    (vda,) = build_timeline([_manifest("b2", 2, inc, "gone", [_disk("vda", inc, "gone")]),
                             _manifest("b3", 3, inc, "b2", [_disk("vda", inc, "b2")])])
    assert len(vda.chains) == 1
    assert vda.chains[0].broken
    assert [p.id for p in vda.chains[0].points] == ["b2", "b3"]


def test_timeline_empty_and_newest_first() -> None:
    assert build_timeline([]) == []
    full = BackupType.FULL
    ms = [_manifest(f"b{i}", i, full, None, [_disk("vda", full, None)]) for i in (2, 1, 3)]
    assert [m.id for m in newest_first(ms)] == ["b3", "b2", "b1"]


# ------------------------------------------------------------------ addresses
MAC = "52:54:00:aa:bb:cc"


def _iface(mac: str | None, *addrs: tuple[str, int, int]) -> dict[str, object]:
    return {"hwaddr": mac, "addrs": [{"addr": a, "prefix": p, "type": t} for a, p, t in addrs]}


def test_agent_wins_over_lease_and_arp_per_nic() -> None:
    agent = {"lo": _iface("00:00:00:00:00:00", ("127.0.0.1", 8, 0), ("::1", 128, 1)),
             "eth0": _iface(MAC.upper(), ("192.168.122.10", 24, 0), ("fe80::1", 64, 1))}
    lease = {"vnet0": _iface(MAC, ("192.168.122.99", 24, 0)),
             "vnet1": _iface("52:54:00:00:00:02", ("192.168.122.20", 24, 0))}
    arp = {"vnet1": _iface("52:54:00:00:00:02", ("192.168.122.21", 0, 0)),
           "vnet2": _iface("52:54:00:00:00:03", ("10.0.0.5", 0, 0))}
    found = merge_addresses([("agent", agent), ("lease", lease), ("arp", arp)])
    assert [(a.interface, a.address, a.source, a.family) for a in found] == [
        ("eth0", "192.168.122.10", "agent", "ipv4"),
        ("eth0", "fe80::1", "agent", "ipv6"),
        ("vnet1", "192.168.122.20", "lease", "ipv4"),
        ("vnet2", "10.0.0.5", "arp", "ipv4"),
    ]
    assert found[0].mac == MAC and found[0].prefix == 24


def test_without_agent_lease_then_arp() -> None:
    arp = {"vnet0": _iface(MAC, ("192.168.122.33", 0, 0))}
    assert [a.source for a in merge_addresses([("arp", arp)])] == ["arp"]
    assert merge_addresses([]) == []
    # an agent NIC without addresses does not hide the lease
    agent = {"eth0": _iface(MAC)}
    lease = {"vnet0": _iface(MAC, ("192.168.122.7", 24, 0))}
    assert [a.source for a in merge_addresses([("agent", agent), ("lease", lease)])] == ["lease"]


# ------------------------------------------------------------------ log-in helpers
@pytest.mark.parametrize(("value", "expected"), [
    ("/vms/a?repo=/x", "/vms/a?repo=/x"), (None, "/"), ("", "/"), ("//evil.example/", "/"),
    ("https://evil.example/", "/"), ("vms", "/"), ("/\\evil", "/"),
])
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_login_token() -> None:
    assert login_token_ok("abc", "abc")
    assert not login_token_ok("abc", "abd")
    assert not login_token_ok(None, "abc")
    assert not login_token_ok("", "")


def test_state_counts_in_display_order() -> None:
    assert state_counts(["shut off", "running", "weird", "running", "paused"]) == [
        ("running", 2), ("paused", 1), ("shut off", 1), ("weird", 1)]

"""libvirt-python's SystemError for a non-UTF-8 error text becomes one clear error."""

from __future__ import annotations

from typing import Any

import pytest

from kvmops.errors import HypervisorError, StateError
from kvmops.host.connection import UNREADABLE_ERROR, call, is_undecodable_error
from kvmops.host.domain import Domain
from kvmops.vm import lifecycle


def _binding_failure() -> SystemError:
    """What the binding raises: a SystemError whose context is the decode error."""
    try:
        try:
            b"Unknown savevm section '\xdb\x01'".decode()
        except UnicodeDecodeError as decode:
            raise SystemError("virDomainCreateWithFlags returned a result with an exception set"
                              ) from decode
    except SystemError as err:
        return err
    raise AssertionError("unreachable")


def test_recognises_only_decode_failures() -> None:
    assert is_undecodable_error(_binding_failure())
    assert not is_undecodable_error(SystemError("something else"))
    assert not is_undecodable_error(ValueError("x"))


def test_call_turns_it_into_a_hypervisor_error() -> None:
    def broken() -> None:
        raise _binding_failure()

    with pytest.raises(HypervisorError) as caught:
        call("starting VM 'web'", broken)
    assert "starting VM 'web'" in caught.value.message
    assert "UTF-8" in caught.value.message


def test_other_system_errors_are_not_swallowed() -> None:
    def broken() -> None:
        raise SystemError("a real interpreter problem")

    with pytest.raises(SystemError):
        call("x", broken)


class _Domain:
    """Stands for a virDomain behind the Domain adapter."""

    def __init__(self, has_save: bool) -> None:
        self.has_save = has_save

    def name(self) -> str:
        return "web"

    def isPersistent(self) -> bool:
        return True

    def hasManagedSaveImage(self, _flags: int) -> int:
        return int(self.has_save)

    def createWithFlags(self, _flags: int) -> None:
        raise _binding_failure()

    def XMLDesc(self, _flags: int) -> str:
        return "<domain type='qemu'><name>x</name><memory>65536</memory></domain>"


class _Host:
    def __init__(self, domain: _Domain) -> None:
        self._domain = domain

    def lookup(self, _name: str) -> Domain:
        return Domain(self._domain)


@pytest.mark.parametrize(("has_save", "kind"), [(True, StateError), (False, HypervisorError)])
def test_start_explains_it(monkeypatch: pytest.MonkeyPatch, has_save: bool,
                           kind: type[Exception]) -> None:
    monkeypatch.setattr(lifecycle, "_require_state", lambda *a, **k: None)
    host: Any = _Host(_Domain(has_save))
    with pytest.raises(kind) as caught:
        lifecycle.start(host, "web")
    text = str(caught.value)
    assert "web" in text and UNREADABLE_ERROR.split(" (")[0] in text
    if has_save:
        assert "--discard-managed-save" in text

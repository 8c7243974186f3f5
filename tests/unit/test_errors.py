from __future__ import annotations

import inspect

import kvmops.errors as errors


def _classes() -> list[type[errors.KvmopsError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.KvmopsError)]


def test_every_error_class_has_its_own_exit_code() -> None:
    codes = [c.exit_code for c in _classes()]
    assert len(codes) == len(set(codes))
    assert all(0 < code < 126 for code in codes)


def test_message_and_hint_form_one_line() -> None:
    err = errors.StateError("cannot resume VM 'a': it is shut off", actual="shut off",
                            required="paused", hint="start it")
    assert str(err) == "cannot resume VM 'a': it is shut off; start it"
    assert "\n" not in str(err)
    assert err.actual == "shut off"

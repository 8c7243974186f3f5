from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

import kvmops.errors as errors


def _classes() -> list[type[errors.KvmopsError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.KvmopsError)]


def test_every_error_class_has_its_own_exit_code() -> None:
    codes = [c.exit_code for c in _classes()]
    assert len(codes) == len(set(codes))
    # 130 is the shell's own code for an interrupted command (128 + SIGINT);
    # every other class stays below the codes the shell reserves.
    assert all(0 < code < 126 or (cls is errors.CancelledError and code == 130)
               for cls, code in zip(_classes(), codes, strict=True))


def test_message_and_hint_form_one_line() -> None:
    err = errors.StateError("cannot resume VM 'a': it is shut off", actual="shut off",
                            required="paused", hint="start it")
    assert str(err) == "cannot resume VM 'a': it is shut off; start it"
    assert "\n" not in str(err)
    assert err.actual == "shut off"


def test_unexpected_exception_is_one_line_without_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmops.cli import main

    def boom() -> None:
        raise RuntimeError("first line\nsecond line")

    monkeypatch.delenv("KVMOPS_DEBUG", raising=False)
    def broken_command(_app: object) -> SimpleNamespace:
        return SimpleNamespace(main=lambda **_kwargs: boom())

    monkeypatch.setattr(main.typer.main, "get_command", broken_command)
    with pytest.raises(SystemExit) as caught:
        main.run()
    assert caught.value.code == main.INTERNAL_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RuntimeError: first line second line" in err and "KVMOPS_DEBUG=1" in err
    monkeypatch.setenv("KVMOPS_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main.run()

"""One exit-code table: the code (errors.py) and the README agree."""

from __future__ import annotations

import re

import kvmops.errors as errors
from kvmops.cli.main import INTERNAL_ERROR_EXIT, INTERRUPTED_EXIT, USAGE_EXIT
from tests.conftest import REPO


def _readme_rows() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    rows = {}
    for match in re.finditer(r"^\| (\d+) \| [^|]+\| (`(\w+)`)? *\|$", text, re.MULTILINE):
        rows[int(match.group(1))] = match.group(3) or ""
    return rows


def _classes() -> dict[str, int]:
    found = {}
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.KvmopsError):
            found[name] = obj.exit_code
    return found


def test_every_error_class_is_in_the_readme_with_its_code() -> None:
    rows = _readme_rows()
    by_class = {cls: code for code, cls in rows.items() if cls}
    assert by_class == _classes()


def test_the_codes_the_cli_uses_itself_are_documented() -> None:
    rows = _readme_rows()
    for code in (0, USAGE_EXIT, INTERNAL_ERROR_EXIT, INTERRUPTED_EXIT):
        assert code in rows
    assert len(set(_classes().values())) == len(_classes()), "two classes share a code"

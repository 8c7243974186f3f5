"""The exit-code table for the documentation: README.md's table, checked against the code.

README.md holds the one table (``tests/unit/test_exit_codes.py`` keeps it in step with
``kvmops/errors.py``); the documentation build copies it and fails when a class of
``kvmops.errors`` is missing from it or has another code, so the site never drifts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| (\d+) \| ([^|]+)\| (?:`(\w+)`)? *\|$", re.MULTILINE)

HEADER = """# Exit codes

Every failure is one line on stderr, `kvmops: error: what failed; what to do`, and an
exit code per kind of failure; the API answers the same kinds with the HTTP status
shown (a JSON body with the one-line message). This table is copied from the README at
every documentation build and checked against `kvmops/errors.py` (the build fails when
they differ); the HTTP statuses are read from the error classes.

| code | meaning | error class | HTTP status |
| --- | --- | --- | --- |
"""


def readme_rows(readme: Path = REPO / "README.md") -> list[tuple[int, str, str]]:
    return [(int(m.group(1)), m.group(2).strip(), m.group(3) or "")
            for m in ROW.finditer(readme.read_text())]


def check(rows: list[tuple[int, str, str]]) -> None:
    """Fail unless every error class is in the table with its own code."""
    import kvmops.errors as errors

    classes = {name: obj.exit_code for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, errors.KvmopsError)}
    documented = {cls: code for code, _meaning, cls in rows if cls}
    if documented != classes:
        missing = sorted(set(classes.items()) ^ set(documented.items()))
        raise SystemExit(f"README exit-code table and kvmops/errors.py differ: {missing}; "
                         "update the README table")


def render() -> str:
    import kvmops.errors as errors

    rows = readme_rows()
    check(rows)
    lines = []
    for code, meaning, cls in rows:
        status = str(getattr(errors, cls).http_status) if cls else ""
        lines.append(f"| {code} | {meaning} | {f'`{cls}`' if cls else ''} | {status} |")
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

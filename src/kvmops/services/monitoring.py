"""The monitoring content kvmops ships: Prometheus alert rules and a Grafana dashboard.

Both are package data (``kvmops/metrics/content``), so a wheel carries them and
``kvmops monitoring rules|dashboard`` prints the copy that matches the installed
exporter's metric names. Reading them needs no host and no permission.
"""

from __future__ import annotations

import re
from importlib import resources

from kvmops.errors import ValidationError

RULES_FILE = "kvmops-alerts.rules.yml"
DASHBOARD_FILE = "kvmops-grafana-dashboard.json"
# A daily backup plus 2 h of slack; issue 14's schedules will give each VM its own.
DEFAULT_BACKUP_MAX_AGE_S = 26 * 3600

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def read_content(name: str) -> str:
    """One shipped file's text."""
    return resources.files("kvmops.metrics").joinpath("content", name).read_text("utf-8")


def parse_duration(text: str) -> int:
    """Seconds of a Prometheus-style duration: ``26h``, ``1d12h``, ``90m``."""
    spec = text.strip()
    parts = re.findall(r"(\d+)([smhdw])", spec)
    if not spec or "".join(f"{n}{u}" for n, u in parts) != spec:
        raise ValidationError(f"invalid duration {text!r}",
                              hint="give a number with a unit s, m, h, d or w, e.g. 26h or 1d12h")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValidationError(f"invalid duration {text!r}", hint="give a duration above 0")
    return seconds


def _human(seconds: int) -> str:
    """The duration in whole hours (``26h``), else minutes or seconds."""
    for unit in ("h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:  # the shipped file and this function are changed together
        raise AssertionError(f"{RULES_FILE}: expected {old!r} once")
    return text.replace(old, new)


def alert_rules(*, backup_max_age_s: int | None = None) -> str:
    """The alert rules file; ``backup_max_age_s`` replaces the default 26 h after which
    a VM's last successful backup is overdue (KvmopsBackupTooOld)."""
    text = read_content(RULES_FILE)
    if backup_max_age_s is None or backup_max_age_s == DEFAULT_BACKUP_MAX_AGE_S:
        return text
    default = DEFAULT_BACKUP_MAX_AGE_S
    text = _replace_once(text, f"> {default}\n", f"> {backup_max_age_s}\n")
    text = _replace_once(text, f"# {default} s = {_human(default)} (",
                         f"# {backup_max_age_s} s = {_human(backup_max_age_s)} (")
    return _replace_once(text, f"expected interval of {_human(default)}.",
                         f"expected interval of {_human(backup_max_age_s)}.")


def grafana_dashboard() -> str:
    """The Grafana dashboard (JSON, for Dashboards > New > Import)."""
    return read_content(DASHBOARD_FILE)

"""The shipped monitoring content as the tests read it: the PromQL of the alert rules and
of the Grafana dashboard (with its variables filled in), and the metric names a query
uses (a small lexer: enough for the queries we ship, not a PromQL parser)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from kvmops.services import monitoring

# Series Prometheus makes itself: not the exporter's to provide.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped",
                            "ALERTS", "ALERTS_FOR_STATE"})
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring",
                       "group_left", "group_right", "offset", "bool", "inf", "nan", "atan2"})
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


@dataclass(frozen=True)
class Query:
    where: str  # "rule KvmopsVMCrashed", "panel 'VM CPU' A", "variable domain"
    expr: str


def rules() -> list[dict[str, Any]]:
    """Every rule of the shipped rules file."""
    doc = yaml.safe_load(monitoring.alert_rules())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(monitoring.grafana_dashboard())
    return loaded


def fill(expr: str, *, host: str = ".*", domain: str = ".*", rate_interval: str = "30s"
         ) -> str:
    """A dashboard query as Grafana sends it, with the variables' values."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$host", host)
            .replace("$domain", domain))


def rule_queries() -> list[Query]:
    return [Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for rule in rules()]


def dashboard_queries(**values: str) -> list[Query]:
    """Every panel target's query, then each query variable's metric selector."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", ()):
            out.append(Query(f"panel {panel['title']!r} {target['refId']}",
                             fill(target["expr"], **values)))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text)
        assert match, (variable["name"], text)
        out.append(Query(f"variable {variable['name']}", fill(match.group(1), **values)))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (bare names and ``__name__`` matchers are
    what we ship; a regex on ``__name__`` is not supported)."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = _GROUPING.sub(" ", text)
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in _KEYWORDS:
            continue
        names.add(word)
    return names

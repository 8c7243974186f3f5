"""``kvmops monitoring``: print the shipped Prometheus alert rules and Grafana dashboard."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(help="Print the shipped Prometheus alert rules and Grafana dashboard.",
                  no_args_is_help=True)


@app.command("rules")
def rules_cmd(backup_max_age: str = typer.Option(
        "26h", "--backup-max-age",
        help="Age of a VM's last successful backup after which it is overdue "
             "(KvmopsBackupTooOld), e.g. 26h, 2d, 1w.")) -> None:
    """The Prometheus alert rules file (YAML, for rule_files: in prometheus.yml).

    It checks with `promtool check rules` and expects the kvmops exporter scraped under a
    job named kvmops... (see docs/concepts/observability.md)."""
    from kvmops.services import monitoring

    seconds = monitoring.parse_duration(backup_max_age)
    sys.stdout.write(monitoring.alert_rules(backup_max_age_s=seconds))


@app.command("dashboard")
def dashboard_cmd() -> None:
    """The Grafana dashboard (JSON: Dashboards > New > Import; pick the Prometheus data
    source that scrapes kvmops)."""
    from kvmops.services import monitoring

    sys.stdout.write(monitoring.grafana_dashboard())

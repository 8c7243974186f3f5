"""``kvmops config``: the effective configuration and where each value comes from."""

from __future__ import annotations

import json
import sys

import typer

app = typer.Typer(help="The effective configuration and where each value comes from.",
                  no_args_is_help=True)


@app.command("show")
def show_cmd(json_out: bool = typer.Option(False, "--json",
                                           help="Print machine-readable JSON.")) -> None:
    """Each setting's value and its source: environment (KVMOPS_*), the file, or default.

    The file is /etc/kvmops/config.toml, or the one KVMOPS_CONFIG names. An invalid
    configuration fails here as everywhere, with exit code 78."""
    from kvmops.config import explain

    current, path, rows = explain()
    if json_out:
        sys.stdout.write(json.dumps({
            "config_file": str(path),
            "config_file_read": current.config_file is not None,
            "settings": {key: {"value": value, "source": source}
                         for key, value, source in rows},
        }, indent=2) + "\n")
        return
    state = "read" if current.config_file is not None else "not present" \
        if not path.exists() else "empty"
    lines = [f"# configuration file: {path} ({state})"]
    shown = [(key, ":".join(value) if isinstance(value, list) else
              "-" if value is None else str(value), source) for key, value, source in rows]
    width = max(len(key) for key, _, _ in shown)
    value_width = max(len(value) for _, value, _ in shown)
    for key, value, source in shown:
        lines.append(f"{key:<{width}}  {value:<{value_width}}  {source}".rstrip())
    sys.stdout.write("\n".join(lines) + "\n")

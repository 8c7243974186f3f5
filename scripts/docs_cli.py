"""Write the CLI reference (Markdown) from the ``kvmops`` command tree itself.

Run by the mkdocs hook (``scripts/docs_hook.py``) at every build, so the reference is
what the code says today; ``python scripts/docs_cli.py`` prints it. The tree is walked
through Click's interface (``list_commands``/``get_command``), so lazily loaded
command groups are documented too.
"""

from __future__ import annotations

import enum
import html
import pathlib
import re
import sys
import types
import typing
from typing import Any

HEADER = """# CLI reference

Generated from the code (`kvmops.cli.main`) at every documentation build: every
command, argument and option with its help. Every command also answers `--help`.
Errors are one line on stderr with an [exit code](../operations/exit-codes.md).

"""


def root_command() -> Any:
    """The Click command behind ``kvmops`` (Typer builds it from the app)."""
    import typer.main

    from kvmops.cli.main import app

    return typer.main.get_command(app)


def text(value: str | None) -> str:
    """Help text as Markdown-safe prose: one paragraph per blank-line block, no HTML."""
    if not value:
        return ""
    value = value.replace("\b", "")
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", value)]
    return "\n\n".join(html.escape(p, quote=False) for p in paragraphs if p)


def cell(value: str) -> str:
    """A table cell: one line, no pipes."""
    return text(value).replace("\n\n", " ").replace("|", "\\|")


def _default(param: Any) -> str:
    default = param.default
    if default is None or default in ("", (), []) or callable(default) or default is False:
        return ""
    if default is True:
        return "on"
    if isinstance(default, enum.Enum):
        default = default.value
    return f"`{default}`"


def _annotation(param: Any) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None)


def _kind(param: Any) -> str:
    """What the value is, from the parameter's annotation (Typer) or Click type."""
    annotation = _annotation(param)
    if typing.get_origin(annotation) in (list, tuple):
        annotation = (typing.get_args(annotation) or (str,))[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else str
    if annotation is bool or getattr(param, "is_flag", False):
        return "flag"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if getattr(param, "metavar", None):
        return f"`{html.escape(param.metavar)}`"
    names = {int: "integer", float: "number", str: "text", pathlib.Path: "path"}
    if annotation in names:
        return names[annotation]
    click_type = getattr(param, "type", None)
    choices = getattr(click_type, "choices", None)
    if choices:
        return " \\| ".join(f"`{c}`" for c in choices)
    return getattr(click_type, "name", None) or "text"


def _param_row(param: Any) -> str | None:
    if getattr(param, "hidden", False) or param.name == "help":
        return None
    if param.param_type_name == "argument":
        name = f"`{(param.metavar or param.name).upper()}`"
        kind = "argument"
    else:
        name = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
        kind = _kind(param)
    extra = []
    if param.required:
        extra.append("required")
    default = _default(param)
    if default:
        extra.append(f"default {default}")
    envvar = getattr(param, "envvar", None)
    if envvar:
        names = envvar if isinstance(envvar, (list, tuple)) else [envvar]
        extra.append("env " + ", ".join(f"`{n}`" for n in names))
    if getattr(param, "multiple", False):
        extra.append("repeatable")
    detail = cell(getattr(param, "help", None) or "")
    if extra:
        detail = f"{detail} ({'; '.join(extra)})" if detail else "; ".join(extra)
    return f"| {name} | {kind} | {detail} |"


def _children(command: Any, ctx: Any) -> list[tuple[str, Any]]:
    if not hasattr(command, "list_commands"):
        return []
    found = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not getattr(sub, "hidden", False):
            found.append((name, sub))
    return found


def _section(command: Any, ctx: Any, depth: int, out: list[str]) -> None:
    path = ctx.command_path
    level = "#" * min(depth + 1, 6)
    out.append(f"{level} `{path}`\n")
    # Typer writes arguments as {name}; the help convention is NAME.
    usage = re.sub(r"\{(\w+)\}|(?<=\[)([a-z_]+)(?=\])", lambda m: m.group(0).strip("{}").upper(),
                   " ".join(command.collect_usage_pieces(ctx)))
    out.append(f"```text\n{path} {usage}\n```\n")
    body = text(command.help)
    if body:
        out.append(body + "\n")
    rows = [row for param in command.get_params(ctx)
            if (row := _param_row(param)) is not None]
    if rows:
        out.append("| name | kind | meaning |\n| --- | --- | --- |")
        out.extend(rows)
        out.append("")
    children = _children(command, ctx)
    if children:
        out.append("| command | what it does |\n| --- | --- |")
        for name, sub in children:
            short = sub.get_short_help_str(limit=200)
            out.append(f"| `{name}` | {cell(short)} |")
        out.append("")
    for name, sub in children:
        sub_ctx = sub.context_class(sub, info_name=name, parent=ctx)
        _section(sub, sub_ctx, depth + 1, out)


def render() -> str:
    """The whole reference as one Markdown page."""
    root = root_command()
    ctx = root.context_class(root, info_name="kvmops")
    out = [HEADER]
    _section(root, ctx, 1, out)
    return "\n".join(out).rstrip() + "\n"


def commands() -> list[str]:
    """Every command path (``kvmops vm create`` ...), for tests."""
    root = root_command()
    found: list[str] = []

    def walk(command: Any, ctx: Any) -> None:
        found.append(ctx.command_path)
        for name, sub in _children(command, ctx):
            walk(sub, sub.context_class(sub, info_name=name, parent=ctx))

    walk(root, root.context_class(root, info_name="kvmops"))
    return found


if __name__ == "__main__":
    sys.stdout.write(render())

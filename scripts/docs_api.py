"""Write the REST API reference (Markdown) from the app's OpenAPI schema.

Run by the mkdocs hook (``scripts/docs_hook.py``) at every build: the FastAPI app is
built (never started: no libvirt, a throw-away SQLite database) and its schema rendered,
one page per tag and one of schemas. ``python scripts/docs_api.py [--json]`` prints the page (or the
schema).
"""

from __future__ import annotations

import html
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")
SCHEMAS_PAGE = "schemas.md"

HEADER = """# REST API reference

Generated at every documentation build from the OpenAPI schema of the kvmops API
(`kvmops.api.app.create_app`); the schema itself is [openapi.json](../openapi.json), and
a running server serves it at `/openapi.json` with Swagger UI at `/docs`.

Authenticate with `Authorization: Bearer TOKEN` (`kvmops user token NAME`) or a
session from `POST /api/v1/login`. Long operations answer `202` with a job
(`GET /api/v1/jobs/{{job_id}}`); errors are JSON with the one-line message and the
same kinds as the [exit codes](../../operations/exit-codes.md).

{toc}
"""


def schema() -> dict[str, Any]:
    """The OpenAPI document of an app built with a throw-away database."""
    from kvmops.api.app import create_app
    from kvmops.api.settings import ApiSettings

    with tempfile.TemporaryDirectory(prefix="kvmops-docs-") as tmp:
        db = f"sqlite:///{Path(tmp) / 'docs.db'}"
        app = create_app(ApiSettings(db_url=db, events=False, create_admin=False, workers=1))
        try:
            return app.openapi()
        finally:
            close = getattr(app.state.kvmops, "close", None)
            if close is not None:
                close()


def text(value: str | None) -> str:
    if not value:
        return ""
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", value)]
    return "\n\n".join(html.escape(p, quote=False) for p in paragraphs if p)


def cell(value: str | None) -> str:
    return text(value).replace("\n\n", " ").replace("|", "\\|")


def anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def type_of(spec: dict[str, Any], page: str = SCHEMAS_PAGE) -> str:
    """A short description of a JSON schema, linked to the schemas page."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}]({page}#{anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in spec:
            parts = [type_of(s, page) for s in spec[key]]
            return " or ".join(dict.fromkeys(parts))
    kind = spec.get("type", "any")
    if kind == "array":
        return f"array of {type_of(spec.get('items', {}), page)}"
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    fmt = spec.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _operation(path: str, method: str, op: dict[str, Any], out: list[str]) -> None:
    out.append(f"## {method.upper()} `{path}`\n")
    if op.get("summary"):
        out.append(f"**{text(op['summary'])}**\n")
    if op.get("description"):
        out.append(text(op["description"]) + "\n")
    params = op.get("parameters", [])
    if params:
        out.append("| parameter | in | type | meaning |\n| --- | --- | --- | --- |")
        for p in params:
            required = " (required)" if p.get("required") else ""
            out.append(f"| `{p['name']}` | {p['in']} | {type_of(p.get('schema', {}))} | "
                       f"{cell(p.get('description'))}{required} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            out.append(f"Request body (`{media}`): {type_of(content.get('schema', {}))}\n")
    responses = op.get("responses", {})
    if responses:
        out.append("| status | meaning | body |\n| --- | --- | --- |")
        for status, resp in responses.items():
            content = resp.get("content", {})
            kinds = ", ".join(type_of(c.get("schema", {})) for c in content.values()) or ""
            out.append(f"| {status} | {cell(resp.get('description'))} | {kinds} |")
        out.append("")


def _schema_section(name: str, spec: dict[str, Any], out: list[str]) -> None:
    out.append(f'## {name} {{ #{anchor(name)} }}\n')
    if spec.get("description"):
        out.append(text(spec["description"]) + "\n")
    props = spec.get("properties", {})
    if props:
        required = set(spec.get("required", []))
        out.append("| field | type | required | meaning |\n| --- | --- | --- | --- |")
        for field, prop in props.items():
            meaning = cell(prop.get("description") or prop.get("title"))
            if "default" in prop and prop["default"] is not None:
                meaning = f"{meaning} (default `{json.dumps(prop['default'])}`)".strip()
            out.append(f"| `{field}` | {type_of(prop, '')} | "
                       f"{'yes' if field in required else ''} | {meaning} |")
        out.append("")
    elif "enum" in spec:
        out.append("One of " + ", ".join(f"`{v}`" for v in spec["enum"]) + ".\n")
    else:
        out.append(f"{type_of(spec, '')}\n")


def slug(tag: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-") or "other"


def operations_by_tag(doc: dict[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((path, method, op))
    return dict(sorted(by_tag.items()))


def pages(doc: dict[str, Any] | None = None, base: str = "reference/api") -> dict[str, str]:
    """Source path -> Markdown: an index, one page per tag, one page of schemas."""
    doc = doc or schema()
    by_tag = operations_by_tag(doc)
    toc = "\n".join(f"- [{tag}]({slug(tag)}.md): {len(ops)} operations"
                    for tag, ops in by_tag.items())
    found = {f"{base}/index.md": HEADER.format(toc=toc + f"\n- [Schemas]({SCHEMAS_PAGE})")}
    for tag, ops in by_tag.items():
        out = [f"# {tag}\n", "Part of the [REST API reference](index.md), generated from the "
               "OpenAPI schema.\n"]
        for path, method, op in ops:
            _operation(path, method, op, out)
        found[f"{base}/{slug(tag)}.md"] = "\n".join(out).rstrip() + "\n"
    out = ["# Schemas\n", "Request and response bodies of the [REST API](index.md).\n"]
    for name, spec in sorted(doc.get("components", {}).get("schemas", {}).items()):
        _schema_section(name, spec, out)
    found[f"{base}/{SCHEMAS_PAGE}"] = "\n".join(out).rstrip() + "\n"
    return found


def render(doc: dict[str, Any] | None = None) -> str:
    """All pages as one Markdown text (for reading on a terminal)."""
    return "\n".join(pages(doc).values())


if __name__ == "__main__":
    if "--json" in sys.argv[1:]:
        sys.stdout.write(json.dumps(schema(), indent=2) + "\n")
    else:
        sys.stdout.write(render())

"""mkdocs hook: generate the reference pages from the code at every build.

Listed under ``hooks:`` in mkdocs.yml. The pages exist only in the build (never in
docs/), so they cannot go stale:

* ``reference/cli.md`` from the Click tree of ``kvmops.cli.main``;
* ``reference/api/*.md`` (an index, a page per tag, the schemas; added to the nav
  here) and ``reference/openapi.json`` from the FastAPI app's OpenAPI schema;
* ``operations/exit-codes.md`` from the README's table checked against
  ``kvmops/errors.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docs_api
import docs_cli
import docs_exit_codes

API_INDEX = "reference/api/index.md"
_pages: dict[str, str] = {}


def generated_pages() -> dict[str, str]:
    """Source path inside docs/ -> content, for every generated page."""
    schema = docs_api.schema()
    return {
        "reference/cli.md": docs_cli.render(),
        **docs_api.pages(schema),
        "reference/openapi.json": json.dumps(schema, indent=2) + "\n",
        "operations/exit-codes.md": docs_exit_codes.render(),
    }


def _api_nav(pages: dict[str, str]) -> list[Any]:
    """The REST API section: its index, one page per tag, the schemas."""
    base = API_INDEX.rsplit("/", 1)[0]
    entries: list[Any] = [API_INDEX]
    for src in sorted(pages):
        if src.startswith(base + "/") and src not in (API_INDEX, f"{base}/schemas.md"):
            title = pages[src].split("\n", 1)[0].removeprefix("# ")
            entries.append({title: src})
    entries.append({"Schemas": f"{base}/schemas.md"})
    return entries


def _expand(nav: Any, pages: dict[str, str]) -> bool:
    """Replace the nav entry naming the API index with the generated section."""
    if isinstance(nav, list):
        return any(_expand(item, pages) for item in nav)
    if isinstance(nav, dict):
        for key, value in nav.items():
            if value == API_INDEX:
                nav[key] = _api_nav(pages)
                return True
            if _expand(value, pages):
                return True
    return False


def on_config(config: Any) -> Any:
    _pages.clear()
    _pages.update(generated_pages())
    if config.get("nav") is not None and not _expand(config["nav"], _pages):
        raise SystemExit(f"mkdocs.yml: the nav has no entry for {API_INDEX}")
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for src_uri, content in _pages.items():
        if files.get_file_from_path(src_uri) is not None:
            raise SystemExit(f"docs/{src_uri} is generated at build time; remove the file")
        files.append(File.generated(config, src_uri, content=content))
    return files

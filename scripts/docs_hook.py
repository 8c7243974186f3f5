"""mkdocs hook: generate the reference pages from the code at every build.

Listed under ``hooks:`` in mkdocs.yml. The pages exist only in the build (never in
docs/), so they cannot go stale: ``reference/cli.md`` from the Click tree of
``kvmops.cli.main``, ``reference/api.md`` and ``reference/openapi.json`` from the
FastAPI app's OpenAPI schema, ``operations/exit-codes.md`` from the README's table
checked against ``kvmops/errors.py``.
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


def generated_pages() -> dict[str, str]:
    """Source path inside docs/ -> content, for every generated page."""
    schema = docs_api.schema()
    return {
        "reference/cli.md": docs_cli.render(),
        "reference/api.md": docs_api.render(schema),
        "reference/openapi.json": json.dumps(schema, indent=2) + "\n",
        "operations/exit-codes.md": docs_exit_codes.render(),
    }


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for src_uri, content in generated_pages().items():
        if files.get_file_from_path(src_uri) is not None:
            raise SystemExit(f"docs/{src_uri} is generated at build time; remove the file")
        files.append(File.generated(config, src_uri, content=content))
    return files

"""The generated documentation pages cover what the code has (scripts/docs_*.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import docs_api
import docs_cli
import docs_exit_codes


def test_cli_reference_has_every_command_and_option() -> None:
    page = docs_cli.render()
    paths = docs_cli.commands()
    assert "kvmops vm create" in paths and "kvmops backup restore" in paths
    for path in paths:
        assert f"`{path}`" in page, path
    create = page.split("`kvmops vm create`", 1)[1].split("\n#", 1)[0]
    for option in ("`--memory`", "`--vcpus`", "`--kernel`", "`--disk`"):
        assert option in create, option


def test_readme_names_every_command_group_and_vm_command() -> None:
    text = (REPO / "README.md").read_text()
    groups = text.split("Command groups: ", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z-]+)`", groups))
    vm_list = re.search(r"`vm` \(([^)]*)\)", groups)
    assert vm_list is not None, groups
    vm_commands = set(vm_list.group(1).replace(",", " ").split())
    for path in docs_cli.commands():
        words = path.split()[1:]
        if len(words) == 1:
            assert words[0] in named, f"README's command groups miss {path}"
        elif len(words) == 2 and words[0] == "vm":
            assert words[1] in vm_commands, f"README's vm commands miss {path}"


def test_api_reference_has_every_operation_and_schema() -> None:
    schema = docs_api.schema()
    pages = docs_api.pages(schema)
    assert "/api/v1/health" in schema["paths"]
    for path, item in schema["paths"].items():
        for method in docs_api.METHODS:
            if method in item:
                tag = (item[method].get("tags") or ["other"])[0]
                page = pages[f"reference/api/{docs_api.slug(tag)}.md"]
                assert f"## {method.upper()} `{path}`" in page, (method, path)
    schemas = pages["reference/api/schemas.md"]
    for name in schema["components"]["schemas"]:
        assert f"{{ #{docs_api.anchor(name)} }}" in schemas, name


def test_exit_code_page_is_the_readme_table_checked_against_the_code(tmp_path: Path) -> None:
    page = docs_exit_codes.render()
    assert "| 3 | not found | `NotFoundError` | 404 |" in page
    assert "| 78 | invalid configuration | `ConfigError` |" in page
    readme = (REPO / "README.md").read_text()
    broken = tmp_path / "README.md"
    broken.write_text(readme.replace("| 3 | not found | `NotFoundError` |\n", ""))
    with pytest.raises(SystemExit, match="NotFoundError"):
        docs_exit_codes.check(docs_exit_codes.readme_rows(broken))

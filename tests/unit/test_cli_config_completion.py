"""``kvmops config show`` (values with their sources) and ``kvmops completion``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import assert_one_line_error, run_cli

BIN = Path(sys.executable).parent


def _show(tmp_path: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = run_cli("config", "show", "--json", env=env)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    return data["settings"]  # type: ignore[no-any-return]


def test_config_show_names_the_source_of_each_value(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('state_dir = "/srv/kvmops/state"\nlog_format = "json"\n'
                      'uri = "qemu:///session"\n')
    env = {"KVMOPS_CONFIG": str(config), "KVMOPS_CACHE_DIR": "/srv/cache",
           "KVMOPS_URI": "", "KVMOPS_LOG_FORMAT": "", "KVMOPS_STATE_DIR": "",
           "KVMOPS_IMAGES_DIR": "", "KVMOPS_DB": ""}
    settings = _show(tmp_path, env)
    assert settings["state_dir"] == {"value": "/srv/kvmops/state", "source": str(config)}
    assert settings["log_format"] == {"value": "json", "source": str(config)}
    assert settings["uri"] == {"value": "qemu:///session", "source": str(config)}
    assert settings["cache_dir"] == {"value": "/srv/cache",
                                     "source": "environment (KVMOPS_CACHE_DIR)"}
    # tests/conftest.py sets KVMOPS_IMAGE_DIRS for every kvmops it starts
    assert settings["image_dirs"]["source"] == "environment (KVMOPS_IMAGE_DIRS)"
    assert settings["db"] == {"value": None, "source": "default"}
    # the environment beats the file
    env["KVMOPS_LOG_FORMAT"] = "text"
    assert _show(tmp_path, env)["log_format"] == {
        "value": "text", "source": "environment (KVMOPS_LOG_FORMAT)"}
    text = run_cli("config", "show", env=env)
    assert text.code == 0, text.stderr
    assert f"configuration file: {config} (read)" in text.stdout
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("state_dir "))
    assert line.split() == ["state_dir", "/srv/kvmops/state", str(config)]


def test_a_bad_configuration_is_one_line_exit_78(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('log_format = "xml"\n')
    result = run_cli("config", "show", env={"KVMOPS_CONFIG": str(config),
                                            "KVMOPS_LOG_FORMAT": ""})
    assert_one_line_error(result, 78, "log_format", "xml", "json")
    config.write_text('nosuchkey = 1\n')
    result = run_cli("config", "show", env={"KVMOPS_CONFIG": str(config)})
    assert_one_line_error(result, 78, "unknown key", "nosuchkey")


def test_completion_prints_scripts_for_the_three_shells() -> None:
    for shell, marker in (("bash", "complete -o default -F _kvmops_completion kvmops"),
                          ("zsh", "#compdef kvmops"), ("fish", "complete --command kvmops")):
        result = run_cli("completion", shell)
        assert result.code == 0, result.stderr
        assert marker in result.stdout and "_KVMOPS_COMPLETE" in result.stdout
    assert_one_line_error(run_cli("completion", "tcsh"), 2, "tcsh")


def test_bash_completion_completes_commands_and_sub_commands() -> None:
    """The printed script, sourced in a real bash, completes through kvmops itself."""
    script = run_cli("completion", "bash").stdout
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def complete(*words: str) -> list[str]:
        program = (f"{script}\nCOMP_WORDS=({' '.join(words)}); "
                   f"COMP_CWORD={len(words) - 1}; _kvmops_completion kvmops; "
                   'printf "%s\\n" "${COMPREPLY[@]}"')
        out = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                             env=env, timeout=60, check=True).stdout
        return out.split()

    assert complete("kvmops", "v") == ["vm", "volume"]
    assert set(complete("kvmops", "co")) == {"config", "completion"}
    assert "list" in complete("kvmops", "vm", "l")
    assert complete("kvmops", "completion", "z") == ["zsh"]


def test_zsh_and_fish_are_answered_through_the_same_protocol() -> None:
    """zsh and fish are not on the test host: their scripts' requests are made by hand,
    with the variables the printed scripts set."""
    def ask(**env: str) -> str:
        proc = subprocess.run([str(BIN / "kvmops")], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    zsh = ask(_KVMOPS_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="kvmops co")
    assert '"config":' in zsh and '"completion":' in zsh and "vm" not in zsh
    fish = ask(_KVMOPS_COMPLETE="complete_fish", _TYPER_COMPLETE_FISH_ACTION="get-args",
               _TYPER_COMPLETE_ARGS="kvmops vm l")
    assert fish.split()[0] == "list"

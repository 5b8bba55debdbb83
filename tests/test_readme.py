"""README.md stays true: every command it shows exists with the options it uses.

The commands' behaviour is tested elsewhere (CLI, weights, training tests, and
the quick start in test_demo.py); this file catches a README that drifts from
the code: a renamed subcommand, a removed flag, a script that moved.
"""

import re
import shlex
import sys

import pytest
import typer
from helpers import ROOT

from stemsplit.cli import app, expand_shorthands

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = (ROOT / "README.md").read_text()


def shell_commands() -> list[list[str]]:
    """Every command of the README's ```bash blocks, split at && and ;, comments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def stemsplit_commands() -> list[list[str]]:
    """The arguments of each ``stemsplit ...`` (or ``torchrun ... -m stemsplit ...``) command."""
    found = []
    for words in shell_commands():
        if words[0] == "stemsplit":
            found.append(words[1:])
        elif words[0] == "torchrun" and "stemsplit" in words:
            found.append(words[words.index("stemsplit") + 1 :])
    return found


def resolve(args: list[str]):
    """The (click) command ``stemsplit ARGS`` runs (default: separate) and its remaining args."""
    command = typer.main.get_command(app)
    args = expand_shorthands(args) if args else ["separate"]
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    return command, args


def test_readme_has_the_commands_users_need():
    names = {resolve(args)[0].name for args in stemsplit_commands()}
    assert {"separate", "batch", "train", "eval", "synth", "doctor"} <= names
    assert {"download", "verify"} <= names


@pytest.mark.parametrize("args", stemsplit_commands(), ids=lambda args: " ".join(args)[:60])
def test_readme_stemsplit_command_uses_existing_options(args):
    command, rest = resolve(args)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            assert flag in options, f"README: `stemsplit {' '.join(args)}`: {command.name} has no {flag}"
    if hasattr(command, "commands"):
        assert not rest or rest[0].startswith("-"), f"README: unknown subcommand in {args}"


def test_readme_scripts_and_extras_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for words in shell_commands():
        for word in words:
            if re.fullmatch(r"(examples|benchmarks|\.ci)/[\w./-]+", word):
                assert (ROOT / word).exists(), f"README names {word}, which does not exist"
            for extra in re.findall(r"\.\[([\w,]+)\]", word):
                assert set(extra.split(",")) <= extras, f"README installs unknown extra in {word}"

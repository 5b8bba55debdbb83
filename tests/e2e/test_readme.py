"""README.md and docs/*.md stay true: every command they show exists with the options it uses,
every relative link leads somewhere, and the README stays short.

The commands' behaviour is tested elsewhere (CLI, weights, training tests, and
the quick start in test_demo.py); this file catches pages that drift from
the code: a renamed subcommand, a removed flag, a script that moved, a docs
page or heading renamed under a link.
"""

import re
import shlex
import sys
from pathlib import Path

import pytest
import typer
from helpers import ROOT

from stemsplit.cli import app, expand_shorthands

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the README first
README_MAX_LINES = 200  # a newcomer reads it in five minutes; the rest is in docs/

FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.S | re.M)


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def shell_commands(text: str) -> list[list[str]]:
    """Every command of a page's ```bash blocks, split at && and ;, comments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a line ending in \ goes on on the next
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


def stemsplit_commands(text: str) -> list[list[str]]:
    """The arguments of each ``stemsplit ...`` (or ``torchrun ... -m stemsplit ...``) command."""
    found = []
    for words in shell_commands(text):
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


def command_names(pages: list[Path]) -> set[str]:
    return {resolve(args)[0].name for page in pages for args in stemsplit_commands(page.read_text())}


# --- commands ---------------------------------------------------------------------------------------


def test_readme_has_an_example_of_every_command():
    """The README shows each command once; the models subcommands may live in docs/models.md."""
    top_level = set(typer.main.get_command(app).commands)
    commands = "separate batch speakers train finetune eval models doctor synth synth-speech"
    assert top_level == set(commands.split())
    assert top_level | {"download"} <= command_names([README])
    assert {"download", "verify", "path", "show"} <= command_names(PAGES)


PAGE_COMMANDS = [(name(page), args) for page in PAGES for args in stemsplit_commands(page.read_text())]


@pytest.mark.parametrize(
    ("page", "args"), PAGE_COMMANDS, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:60]
)
def test_stemsplit_command_uses_existing_options(page, args):
    command, rest = resolve(args)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            assert flag in options, f"{page}: `stemsplit {' '.join(args)}`: {command.name} has no {flag}"
    if hasattr(command, "commands"):
        assert not rest or rest[0].startswith("-"), f"{page}: unknown subcommand in {args}"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_scripts_and_extras_exist(page):
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for words in shell_commands(page.read_text()):
        for word in words:
            if re.fullmatch(r"(examples|benchmarks|\.ci)/[\w./-]+", word):
                assert (ROOT / word).exists(), f"{name(page)} names {word}, which does not exist"
            for extra in re.findall(r"\.\[([\w,]+)\]", word):
                assert set(extra.split(",")) <= extras, f"{name(page)} installs unknown extra in {word}"


# --- length and links -------------------------------------------------------------------------------


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"
    )


def test_readme_links_every_docs_page():
    linked = {target for target, _ in links(README.read_text())}
    for page in PAGES[1:]:
        assert name(page) in linked, f"README.md's documentation index does not link {name(page)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (code marks, link targets and emphasis gone), lower
    case, punctuation other than - and _ removed, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](target) -> text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (outside code blocks); a repeated slug gets -1, -2, ..."""
    found: dict[str, int] = {}
    result = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", text), flags=re.M):
        base = slug(match.group(1))
        count = found.get(base, 0)
        found[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of each relative link of a page, outside code blocks and code spans; path ""
    for a link within the page."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for path, anchor in links(page.read_text()):
        target = (page.parent / path).resolve() if path else page
        shown = f"{name(page)}: ({path}{'#' + anchor if anchor else ''})"
        if not target.is_relative_to(ROOT.resolve()) or not target.exists():
            problems.append(f"{shown}: no such file in the repository")
        elif anchor and (target.suffix != ".md" or anchor not in anchors(target.read_text())):
            problems.append(f"{shown}: no heading with that anchor in {target.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_relative_links_lead_somewhere(page):
    assert broken_links(page) == []


def test_slugs_follow_github():
    assert slug("What stemsplit promises") == "what-stemsplit-promises"
    assert slug("`--shifts`") == "--shifts"
    assert (
        slug("`--model-config`: a checkpoint with its MSST YAML")
        == "--model-config-a-checkpoint-with-its-msst-yaml"
    )
    assert slug("Cache, offline use, another registry") == "cache-offline-use-another-registry"
    assert slug("One song, from flags to files") == "one-song-from-flags-to-files"
    assert anchors("# A\n```bash\n# A\n```\n## A\n### a!\n") == {"a", "a-1", "a-2"}  # code is no heading


def test_broken_links_are_found(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.md").write_text("# Other\n## Real heading\n")
    page = root / "README.md"
    page.write_text(
        "# Top\n[ok](docs/other.md#real-heading) [here](#top) [web](https://example.com)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#nothing) [bad here](#nothing) [out](../x.md)\n"
    )
    (tmp_path / "x.md").touch()  # exists, but outside the repository
    assert [problem.split(": ", 1)[1] for problem in broken_links(page)] == [
        "(docs/missing.md): no such file in the repository",
        "(docs/other.md#nothing): no heading with that anchor in other.md",
        "(#nothing): no heading with that anchor in README.md",
        "(../x.md): no such file in the repository",
    ]

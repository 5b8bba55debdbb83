"""One error base (stemsplit.errors.StemsplitError), handled in one place (cli.common.Commands), and the
lazy public API of ``import stemsplit``."""

import importlib
import inspect
import pkgutil

import pytest
import typer
from helpers import cli, python
from typer.testing import CliRunner

import stemsplit
from stemsplit.cli.common import Commands
from stemsplit.errors import EXIT_USAGE, StemsplitError, UsageError

# Exceptions that never reach a user as they are: each is caught and said otherwise.
NOT_FOR_USERS = {
    "StateDictMismatch": "weights.checkpoint turns it into a CheckpointError naming the file",
    "Interrupted": "a KeyboardInterrupt (SIGTERM, SIGHUP): the exit status says which signal",
    "SongCancelled": "Ctrl-C reaching a --ray worker: its song is dropped, the driver reports the stop",
    "DecodeFailed": "audio.decode and audio.probe turn it into an AudioError saying where the audio stops",
}


def test_every_error_a_user_can_get_is_a_stemsplit_error():
    found = {}
    for module in pkgutil.walk_packages(stemsplit.__path__, "stemsplit."):
        if module.name == "stemsplit.__main__":  # (runs the command line)
            continue
        mod = importlib.import_module(module.name)
        for name, value in vars(mod).items():
            defined_here = inspect.isclass(value) and value.__module__ == mod.__name__
            if defined_here and issubclass(value, BaseException):
                found[name] = value
    public = {
        name: cls for name, cls in found.items() if not name.startswith("_") and name not in NOT_FOR_USERS
    }
    assert len(public) >= 20, sorted(public)  # the scan found the modules' errors
    assert [name for name, cls in public.items() if not issubclass(cls, StemsplitError)] == []
    assert set(NOT_FOR_USERS) <= set(found)  # the exceptions above still exist


def test_an_error_keeps_its_setting_and_exit_status():
    from stemsplit.engine.settings import SeparationError
    from stemsplit.weights import CheckpointError

    error = SeparationError("must be above 0", "window")
    assert (str(error), error.problem, error.option, error.exit_code) == (
        "window: must be above 0",
        "must be above 0",
        "window",
        1,
    )
    assert UsageError("no").exit_code == EXIT_USAGE and StemsplitError("x", exit_code=3).exit_code == 3
    assert isinstance(CheckpointError("bad"), StemsplitError)


def _app() -> typer.Typer:
    """An app of two commands on stemsplit's group: one fails at run time, one is misused."""
    app = typer.Typer(cls=Commands)

    @app.command()
    def run(debug: bool = typer.Option(False, "--debug")) -> None:
        raise StemsplitError("must be above 0", "window")

    @app.command()
    def misuse(debug: bool = typer.Option(False, "--debug")) -> None:
        raise UsageError("--x: not a number")

    return app


def test_the_group_prints_one_line_with_the_flag_and_exits_with_the_errors_status():
    result = CliRunner().invoke(_app(), ["run"])
    assert (result.exit_code, result.stderr) == (1, "stemsplit: error: --window: must be above 0\n")
    result = CliRunner().invoke(_app(), ["misuse", "--debug"])  # a usage error stays one line
    assert (result.exit_code, result.stderr) == (2, "stemsplit: error: --x: not a number\n")
    result = CliRunner().invoke(_app(), ["run", "--debug"])  # --debug: the traceback, for a bug report
    assert isinstance(result.exception, StemsplitError) and result.stderr == ""


def test_a_library_error_from_a_command_is_one_line():
    """train's DatasetError, raised deep in the library, is printed by the group, once."""
    result = cli("synth", "/proc/stemsplit-cannot-write-here", "--songs", "1", "--seconds", "1")
    assert result.returncode in (1, 2) and result.stderr.startswith("stemsplit: error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_import_stemsplit_is_the_public_api_without_torch():
    code = (
        "import sys, stemsplit\n"
        "assert 'torch' not in sys.modules, 'import stemsplit imported torch'\n"
        "names = stemsplit.list_models()\n"
        "assert 'torch' not in sys.modules and 'demo' in names and 'htdemucs_ft' in names, names\n"
        "from stemsplit.separate import Separator\n"
        "from stemsplit.engine.ensemble import Ensemble\n"
        "from stemsplit.errors import StemsplitError\n"
        "assert stemsplit.Separator is Separator and stemsplit.Ensemble is Ensemble\n"
        "assert stemsplit.StemsplitError is StemsplitError and callable(stemsplit.load_model)\n"
        "print(sorted(stemsplit.__all__))\n"
    )
    result = python("-c", code, check=0)
    assert "'Separator'" in result.stdout
    with pytest.raises(AttributeError, match="no attribute 'Seperator'"):
        stemsplit.Seperator  # noqa: B018


# The modules that import without torch: every command's checks (flags, files, the registry, datasets'
# layouts) run in them, so a usage error comes back in a fraction of a second. One more that needs torch
# at import makes every usage error of the commands that use it slow: this list says so in review.
TORCH_FREE = [
    "stemsplit.version",
    "stemsplit",
    "stemsplit.errors",
    "stemsplit.card",
    "stemsplit.engine",
    "stemsplit.engine.settings",
    "stemsplit.files",
    "stemsplit.audio",
    "stemsplit.audio.info",
    "stemsplit.audio.downmix",
    "stemsplit.audio.resample",
    "stemsplit.audio.spliced",
    "stemsplit.audio.ffmpeg",
    "stemsplit.audio.probing",
    "stemsplit.audio.decode",
    "stemsplit.audio.native_stderr",
    "stemsplit.output",
    "stemsplit.output.plan",
    "stemsplit.output.writer",
    "stemsplit.output.journal",
    "stemsplit.engine.request",
    "stemsplit.batch",
    "stemsplit.batch.songs",
    "stemsplit.batch.records",
    "stemsplit.batch.claims",
    "stemsplit.report",
    "stemsplit.engine.runtime",
    "stemsplit.engine.ensemble_spec",
    "stemsplit.cli",
    "stemsplit.cli.common",
    "stemsplit.cli.separate",
    "stemsplit.cli.flags",
    "stemsplit.cli.reporter",
    "stemsplit.cli.run",
    "stemsplit.cli.song",
    "stemsplit.cli.model_args",
    "stemsplit.cli.ray_batch",
    "stemsplit.cli.models",
    "stemsplit.cli.train",
    "stemsplit.cli.eval",
    "stemsplit.cli.synth",
    "stemsplit.cli.doctor",
    "stemsplit.weights",
    "stemsplit.weights.errors",
    "stemsplit.weights.registry",
    "stemsplit.weights.cache",
    "stemsplit.weights.download",
    "stemsplit.weights.metadata",
    "stemsplit.weights.msst",
    "stemsplit.weights.demucs",
    "stemsplit.datasets",
    "stemsplit.datasets.musdb",
    "stemsplit.datasets.musdb_layout",
    "stemsplit.datasets.libri2mix",
    "stemsplit.datasets.synth",
    "stemsplit.datasets.synth_request",
    "stemsplit.datasets.speech_synth",
    "stemsplit.datasets.fluidsynth",
    "stemsplit.evaluate",
    "stemsplit.evaluate.metrics",
    "stemsplit.evaluate.stems",
    "stemsplit.train",
    "stemsplit.train.config",
    "stemsplit.train.errors",
]


def test_the_torch_free_modules_import_without_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
        "print('ok')\n"
    )
    assert python("-c", code, check=0).stdout == "ok\n"


def test_every_install_hint_names_this_distribution_and_an_extra_it_has():
    """A message saying ``pip install 'stemsplit[train]'`` would install someone else's project
    (``stemsplit`` on PyPI is not this one): every hint names pyproject's name and one of its extras."""
    import re
    from pathlib import Path

    from stemsplit.weights.registry import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    hints = []
    for path in sorted((root / "src" / "stemsplit").rglob("*.py")):
        hints += [(path.name, *m) for m in re.findall(r"'(stemsplit[\w.-]*)\[(\w+)\]'", path.read_text())]
    assert len(hints) >= 5  # train (3), speech, ray: the scan finds them
    for name, distribution, extra in hints:
        assert distribution == project["name"], f"{name}: '{distribution}[{extra}]'"
        assert extra in project["optional-dependencies"], f"{name}: no extra {extra!r}"

"""``stemsplit models``: the table, download, path and verify, run through Typer's CliRunner.

Downloads go to a real HTTP server on 127.0.0.1; cache and registry live in tmp_path.
"""

import json

import pytest
import typer
from typer.testing import CliRunner
from weights_server import tiny_entry, write_registry

from stemsplit.card import MUSIC_STEMS
from stemsplit.cli.models import models_app

runner = CliRunner()


@pytest.fixture
def env(env, server):
    """conftest's private cache and registry, the registry naming two models on the test server."""
    metrics = {"source": "a test", "sdr_avg": 1.25}
    write_registry(
        env / "weights.toml",
        {
            "tiny": tiny_entry(url=server.url("tiny.ckpt"), metrics=metrics, license="CC-BY-4.0"),
            "small": tiny_entry(url=server.url("tiny.safetensors"), light=True),
        },
    )
    return env


def _rows(output: str) -> dict[str, str]:
    """The table's rows by model name (a row starts with the name)."""
    return {
        line.split()[0]: line for line in output.splitlines() if line.split()[:1] in (["tiny"], ["small"])
    }


def test_table_lists_models_with_marks(env):
    result = runner.invoke(models_app, [], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert set(rows) == {"tiny", "small"}
    assert max(len(line) for line in result.output.splitlines()) <= 80  # nothing cut at 80 columns
    assert "1.25 avg ?" in rows["tiny"] and "ts-bsmamba2" in rows["tiny"]  # no test set named: "?"
    assert "~11 MB" in rows["small"]  # size estimated from the architecture
    assert "default: tiny; light: small" in result.output and "cached" not in result.output

    assert runner.invoke(models_app, ["download", "small", "-q"]).exit_code == 0
    output = runner.invoke(models_app, []).output
    assert " 11 MB" in _rows(output)["small"] and "cached: small" in output


def test_one_model_in_full_and_json(env):
    result = runner.invoke(models_app, ["show", "tiny"])
    assert result.exit_code == 0, result.output
    assert "golden small test model" in result.output and "CC-BY-4.0" in result.output
    assert "SDR avg 1.25 dB" in result.output and "trust on first use" in result.output
    assert runner.invoke(models_app, ["show", "nope"]).exit_code == 2
    listed = json.loads(runner.invoke(models_app, ["--json"]).output)
    assert [m["name"] for m in listed["models"]] == ["tiny", "small"]
    one = json.loads(runner.invoke(models_app, ["show", "tiny", "--json"]).output)
    assert one == listed["models"][0]
    assert one["metrics"] == {"source": "a test", "sdr_avg": 1.25} and one["stems"] == list(MUSIC_STEMS)


def test_download_then_path(env, server):
    assert runner.invoke(models_app, ["path", "tiny"]).exit_code == 1
    result = runner.invoke(models_app, ["download", "tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    expected = str(env / "cache" / "models" / "tiny" / "tiny.safetensors")
    assert result.output.strip() == expected
    result = runner.invoke(models_app, ["path"])  # the default model
    assert (result.exit_code, result.output.strip()) == (0, expected)
    assert len(server.requests) == 1


def test_path_of_missing_model_says_how_to_get_it(env):
    result = runner.invoke(models_app, ["path", "tiny"])
    assert result.exit_code == 1 and result.output.startswith("stemsplit: error: tiny is not downloaded")
    assert "not downloaded yet; run `stemsplit models download tiny`" in result.output


@pytest.mark.parametrize("command", ["path", "verify", "download"])
@pytest.mark.parametrize("name", ["tinyy", "runs/x/best.safetensors"])
def test_a_name_not_in_the_registry_is_a_usage_error(env, command, name):
    """Before: exit 1, and the advice that a checkpoint file or URL works too, which `models` commands
    do not take."""
    result = runner.invoke(models_app, [command, name])
    assert result.exit_code == 2
    assert result.output.startswith(f"stemsplit: error: no model named {name!r} in ")
    assert "works too" not in result.output and result.output.count("\n") == 1
    assert ("did you mean 'tiny'?" in result.output) == (name == "tinyy")


def test_verify_detects_tampering(env):
    result = runner.invoke(models_app, ["verify"])
    assert result.exit_code == 0 and result.output.count("not cached") == 2
    assert runner.invoke(models_app, ["verify", "tiny"]).exit_code == 1  # named but not cached

    assert runner.invoke(models_app, ["download", "tiny", "-q"]).exit_code == 0
    result = runner.invoke(models_app, ["verify", "tiny"])
    assert result.exit_code == 0 and "ok  tiny" in result.output

    original = env / "cache" / "models" / "tiny" / "tiny.ckpt"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    original.write_bytes(bytes(data))
    result = runner.invoke(models_app, ["verify"])
    assert result.exit_code == 1
    assert "mismatch  tiny" in result.output and "recorded on first use" in result.output


def test_errors_are_one_line_messages(env, monkeypatch):
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    result = runner.invoke(models_app, ["download", "tiny"])
    assert result.exit_code == 1
    assert "offline mode is on" in result.output and "Traceback" not in result.output

    monkeypatch.delenv("STEMSPLIT_OFFLINE")
    result = runner.invoke(models_app, ["download", "nope"])
    assert result.exit_code == 2 and "no model named 'nope'" in result.output  # a usage error

    (env / "weights.toml").write_text('default = "tiny"\n[models.tiny\n')
    result = runner.invoke(models_app, [])
    assert result.exit_code == 1 and "weights.toml:2: invalid TOML" in result.output


def test_mounted_under_the_main_app(env):
    """cli.py mounts it with app.add_typer(models_app, name="models"); `stemsplit models` shows the table."""
    app = typer.Typer()

    @app.command()
    def info() -> None:
        pass

    app.add_typer(models_app, name="models")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output and "default" in result.output
    assert runner.invoke(app, ["models", "path", "tiny"]).exit_code == 1


def test_models_name_is_the_full_view_through_the_main_entry(env, capsys):
    """`stemsplit models NAME` (cli.main inserts the hidden `show`); subcommands keep their names."""
    from stemsplit.cli import main

    for argv, expected in ((["models", "tiny"], "golden small test model"), (["models", "path", "tiny"], "")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        out, err = capsys.readouterr()
        assert expected in out and (exit_.value.code == 0) == bool(expected), err

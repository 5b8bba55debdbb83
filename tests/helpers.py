"""Small helpers shared by the tests: paths, tiny networks, real audio files, real commands.

Fixtures made from these (a tiny checkpoint, the golden model, the loopback server) are in conftest.py.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemsplit.card import MUSIC_STEMS, ModelCard, default_stem_names

ROOT = Path(__file__).parents[1]  # the repository
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN_WEIGHTS = FIXTURES / "golden_small_weights.safetensors"  # the small reference model (N = 32, 2 + 2)
RATE = 44100
SPEECH_RATE = 8000  # the speaker tests' rate: speech networks run at 8 kHz
FOUR_STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]  # sorted file names of a song's stems
# Small windows on the CPU: plumbing tests run in seconds with the tiny checkpoint.
FAST = ["--window", "1", "--hop", "0.5", "--device", "cpu"]

# --- tiny networks ------------------------------------------------------------------------------

# Each family's tiny config: random weights, a few seconds of training, for plumbing tests.
TINY = {
    "ts-bsmamba2": {"feature_dim": 16, "num_repeat_mask": 1, "num_repeat_map": 1},
    "bsrnn": {"feature_dim": 8, "num_layers": 1},
}


def tiny_model(arch: str = "ts-bsmamba2", stems=MUSIC_STEMS, **overrides) -> torch.nn.Module:
    """Family ``arch``'s tiny network for ``stems`` (``overrides`` change TINY's config), seed 0.

    As ``build_model`` makes it: in train mode.
    """
    from stemsplit.model import build_model, make_config

    torch.manual_seed(0)
    config = make_config(arch, overrides=TINY[arch] | overrides, stems=stems)
    return build_model(arch, config, stems)


# A stand-in music network for the plumbing of the CLI and the engine (files, names, formats, batch's
# records, messages), which any network proves as well as TS-BSMamba2 does: it is a registered family
# with a real ModelCard (what the engine and the loader read), costs nothing to run, and its checkpoint
# names its stems in the metadata as save_checkpoint writes it. The conftest's stub_checkpoint fixture
# registers it for one test: a process without it cannot load the file (use tiny_checkpoint there).
STUB_ARCH = "stub-music"


@dataclass(frozen=True)
class StubConfig:
    sr: int = RATE
    num_output: int = 4


class StubNet(torch.nn.Module):
    """mixture [B, ch, T] -> (stage 1, stage 2), each [B, S, ch, T]: stage 1 gives each stem a fixed share
    of the mixture (the shares sum to 1: stage 1 sums to the mixture, as TS-BSMamba2's does), stage 2
    scales each stem by its own gain (the stages differ)."""

    def __init__(self, config: StubConfig, stems=()) -> None:
        super().__init__()
        self.config = config
        self.share = torch.nn.Parameter(torch.linspace(-1.0, 1.0, config.num_output))
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 1.5, config.num_output))
        self.card = ModelCard(
            architecture=STUB_ARCH,
            stems=tuple(stems) or default_stem_names(config.num_output),
            sample_rate=config.sr,
            min_samples=1025,
            stft=(2048, 512),
            stages=2,
        )

    def forward(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stage1 = torch.softmax(self.share, 0)[None, :, None, None] * mixture[:, None]
        return stage1, stage1 * self.gain[None, :, None, None]


def stub_family():
    """StubNet as an architecture-registry entry."""
    from stemsplit.model import families

    return families.Family(
        name=STUB_ARCH,
        summary="a stand-in music network for the plumbing tests",
        config_type=StubConfig,
        presets={"stub": StubConfig()},
        default_preset="stub",
        build=lambda config, stems: StubNet(config, stems),
        shrink=lambda config: config,
        stem_field="num_output",
    )


def tiny_toml(arch: str = "ts-bsmamba2") -> str:
    """TINY[arch] as the text of a ``--model-config`` file."""
    return "".join(f"{key} = {value}\n" for key, value in TINY[arch].items())


def fit(model: torch.nn.Module, loss, steps: int = 30, lr: float = 1e-3, clip_norm: float | None = None):
    """Train ``model`` with Adam for ``steps`` steps on one batch; ``loss()`` computes the batch's loss
    (by calling the model). Returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        losses.append(value.item())
    return losses


# --- audio --------------------------------------------------------------------------------------


def song(path, seconds=1.3, rate=RATE, channels=2, subtype="FLOAT", scale=0.3, fmt=None):
    """Write a chord of sines (one tone per channel) and return it as [frames, channels] float32."""
    t = np.arange(int(seconds * rate)) / rate
    tones = [np.sin(2 * np.pi * f * t) for f in (220, 330, 440, 550, 660, 770, 880, 990)[:channels]]
    audio = (scale * np.stack(tones, axis=1)).astype(np.float32)
    sf.write(path, audio, rate, subtype=subtype, format=fmt)
    return audio


def music(seconds: float, rate: int = RATE, channels: int = 2) -> np.ndarray:
    """[frames, channels] float32: a different chord per channel plus low-passed noise (aperiodic, so a
    wrong alignment or channel order shows)."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(channels)
    kernel = np.hanning(2 * (rate // 4000) + 1)  # noise below ~4 kHz: what any codec keeps
    columns = []
    for c in range(channels):
        base = 110.0 * (c + 2)
        tone = sum(np.sin(2 * np.pi * base * k * t + c) / k for k in (1, 2, 3))
        noise = np.convolve(rng.standard_normal(len(t)), kernel / kernel.sum(), mode="same")
        columns.append(0.15 * tone + 0.3 * noise / noise.std())
    audio = np.stack(columns, axis=1)
    return (0.7 * audio / np.abs(audio).max()).astype(np.float32)  # room for codecs' overshoot


def tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    """A sine of ``hz`` at 0.3, the same in both channels: [frames, 2] float32."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * hz * t)] * 2, axis=1).astype(np.float32)


def aac_file(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    """An M4A (MP4 container, AAC) of ``audio`` [frames, 2] float32, written with PyAV: a file only FFmpeg
    reads (libsndfile does not)."""
    import av

    with av.open(os.path.abspath(path), "w", format="mp4") as out:  # (absolute: "pipe:x" is a file)
        stream = out.add_stream("aac", rate=rate, layout="stereo")
        for at in range(0, len(audio), 4096):
            packed = np.ascontiguousarray(audio[at : at + 4096], dtype=np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(packed, format="flt", layout="stereo")
            frame.sample_rate, frame.pts = rate, at
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_track(folder: Path, stems: dict[str, np.ndarray], rate: int, mixture: bool = True) -> None:
    """A MUSDB18-HQ-style track folder: ``{stem}.wav`` for each [frames, channels] array (float wav)
    and, if ``mixture``, their sum as ``mixture.wav``."""
    folder.mkdir(parents=True)
    for name, audio in stems.items():
        sf.write(folder / f"{name}.wav", np.asarray(audio, np.float32), rate, subtype="FLOAT")
    if mixture:
        sf.write(folder / "mixture.wav", sum(stems.values()).astype(np.float32), rate, subtype="FLOAT")


def talkers(seconds: float, rate: int = SPEECH_RATE) -> np.ndarray:
    """Two 'voices' [2, samples]: harmonics of 120 and 210 Hz, each with its own vibrato and syllable rate."""
    t = np.arange(round(seconds * rate)) / rate

    def voice(f0, vibrato, syllables, phase):
        pitch = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * vibrato * t))) / rate
        harmonics = sum(np.sin(k * pitch) / k for k in range(1, 6))
        return 0.1 * (0.55 + 0.45 * np.sin(2 * np.pi * syllables * t + phase)) * harmonics

    return np.stack([voice(120, 5.0, 3.1, 0.0), voice(210, 6.3, 4.3, 1.0)]).astype(np.float32)


# --- commands -----------------------------------------------------------------------------------


def run(*command, check=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` (paths and numbers are passed as text) capturing its output as text;
    ``check`` asserts its exit status."""
    if "input" not in kwargs:  # never the test process's stdin (under pytest-xdist, its worker's channel)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def stemsplit(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``stemsplit`` command (see ``run``)."""
    return run(shutil.which("stemsplit"), *args, **kwargs)


# Where a fresh process is the point (torch not imported, signals, umask and rlimits, fd 2, COLUMNS read at
# start-up, racing processes, torchrun), tests run the real command with ``stemsplit``; everything else
# calls the same entry point in this process with ``cli``: the same argv, the same exit status and
# output, without a Python start-up and torch import per call.

_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@contextmanager
def _process_state(cwd=None, env=None):
    """Run the body with ``env`` as the whole environment and ``cwd`` as the working folder (as a child
    process would have them); put both back afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in env.items()})
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _captured(stream) -> io.TextIOWrapper:
    """A text stream like a child's stdout or stderr on a pipe: UTF-8, the same error handler, no tty."""
    return io.TextIOWrapper(
        io.BytesIO(), encoding="utf-8", errors=getattr(stream, "errors", None) or "strict", write_through=True
    )


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``stemsplit ARGS`` in this process, for a test that registers its own family or registry:
    (status, stdout, stderr), as pytest's ``capsys`` captured them."""
    from stemsplit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def cli(*args, check=None, cwd=None, env=None, timeout=None) -> subprocess.CompletedProcess:
    """Run ``stemsplit ARGS`` in this process: ``stemsplit.cli.main(argv)``, as the console script does.

    Returns what ``stemsplit(...)`` returns (``returncode``, ``stdout``, ``stderr`` as text); ``check``
    asserts the exit status. ``env`` is the whole environment and ``cwd`` the working folder for the
    call, as for a child process; ``timeout`` is accepted and ignored. An exception escaping ``main``
    (only ``--debug`` lets one out) prints its traceback and exits 1, as the interpreter does. The call
    must leave the process as it found it: signal handlers, torch's thread count (both checked) and
    torch's random generator (put back).
    """
    import torch

    from stemsplit.cli import main

    argv = list(map(str, args))
    out, err = _captured(sys.__stdout__), _captured(sys.__stderr__)
    handlers = [signal.getsignal(s) for s in _SIGNALS]
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()  # training seeds torch's generator: a child's would not be this one
    with _process_state(cwd, env), redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, int | None):
                print(exit_.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    torch.set_rng_state(rng)
    assert [signal.getsignal(s) for s in _SIGNALS] == handlers, "stemsplit left a signal handler behind"
    assert torch.get_num_threads() == threads, "stemsplit changed torch's thread count"
    result = subprocess.CompletedProcess(
        ["stemsplit", *argv], code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()
    )
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def python(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run this Python on ``args``: a script, ``-c CODE`` or ``-m MODULE`` (see ``run``)."""
    return run(sys.executable, *args, **kwargs)


def stemsplit_without_torch(*argv, **kwargs) -> subprocess.CompletedProcess:
    """Run ``stemsplit.cli.main(argv)`` in a fresh Python whose stdout ends with its exit status and
    whether torch was imported: ``"2 False"`` is a usage error found before torch (see ``run``)."""
    code = (
        "import sys\nfrom stemsplit.cli import main\ntry:\n"
        f"    main({list(map(str, argv))!r})\n"
        "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)\n"
    )
    return python("-c", code, **{"timeout": 60, **kwargs})


def run_until_windows(args, **kwargs) -> subprocess.Popen:
    """Start ``stemsplit *args --json``; return the process once its first window batch is done.

    SIGINT and SIGHUP get their default action back: a test run started in the background (nohup,
    ``&``) ignores them, and so would the child.
    """
    proc = subprocess.Popen(
        [shutil.which("stemsplit"), *map(str, args), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)],
        **kwargs,
    )
    for line in proc.stdout:
        if json.loads(line)["event"] == "windows":
            return proc
    raise AssertionError(proc.communicate()[1])


def dead_pid() -> int:
    """The pid of a process that has ended and been reaped: no process has it (until the kernel reuses it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def train_args(musdb: Path, out: Path, *extra) -> list:
    """``stemsplit train`` arguments for a quick CPU run of the tiny TS-BSMamba2 on ``musdb`` (the
    tiny_musdb fixture) into ``out``; ``extra`` adds flags."""
    return [
        "train", "--musdb", musdb, "-o", out, "--model-config", musdb / "tiny.toml",
        "--crop-seconds", "1", "--batch-size", "2", "--epoch-size", "8", "--workers", "0",
        "--valid-hop", "1.5", "--device", "cpu", *extra,
    ]  # fmt: skip


def run_train(args: list) -> subprocess.CompletedProcess:
    """Run ``stemsplit *args`` (from ``train_args``) in this process (``cli``) with its cache beside the
    run folder."""
    out = Path(args[args.index("-o") + 1])
    return cli(*args, env={**os.environ, "STEMSPLIT_CACHE": str(out.parent / "cache")})


def json_events(result: subprocess.CompletedProcess) -> list[dict]:
    """The events a ``--json`` run printed, one dict a line."""
    return [json.loads(line) for line in result.stdout.splitlines()]


def read_log(out: Path) -> list[dict]:
    """A training run's ``log.jsonl``, one dict a line."""
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --- batch's records ----------------------------------------------------------------------------


def leave_claim(out: Path, music: Path, name: str, **fields):
    """A claim (``stemsplit.batch.Claim``) on music/NAME as a process that is gone left it: fresh,
    touched just now, its file holding ``{"token": "gone", **fields}``."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    [planned] = plan_outputs([SongSource(music / name)], out, ["vocals"], OutputOptions())
    claim = Claim(out, planned)
    claim.path.parent.mkdir(parents=True, exist_ok=True)
    claim.path.write_text(json.dumps({"token": "gone", **fields}))
    return claim


def read_report(path: Path) -> tuple[list[dict], list[dict]]:
    """(the song lines, the summary lines) of a run report (``--report``); every line must be one JSON
    object."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["record"] == "song"], [r for r in records if r["record"] == "summary"]


# --- checking -----------------------------------------------------------------------------------


def files_under(folder, state=True):
    """Every file under ``folder`` (hidden ones too), relative, sorted; [] if it does not exist.

    ``state=False`` leaves out ``batch``'s own records (``.stemsplit/``).
    """
    folder = Path(folder)
    if not folder.exists():
        return []
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return files if state else [f for f in files if not f.startswith(".stemsplit/")]


def fill_disk(mount: Path, leave: int) -> None:
    """Fill the filesystem of ``mount`` (the small_disk fixture) with one file, leaving ``leave`` bytes."""
    st = os.statvfs(mount)
    (mount / "filler").write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against the reference ``b``."""
    return ((a - b).norm() / b.norm()).item()

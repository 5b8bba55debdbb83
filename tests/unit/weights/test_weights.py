"""Pretrained weights: registry, verified and resumable downloads, cache, offline mode, safe loading.

Every download goes to a real HTTP server on 127.0.0.1 started by the test;
the cache and the registry live in tmp_path, so nothing touches the network or
the home directory.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import GOLDEN_WEIGHTS, ROOT, cli, python
from safetensors.torch import load_file, save_file
from weights_server import golden_ckpt_bytes, tiny_entry, write_registry

from stemsplit import weights
from stemsplit.card import MUSIC_STEMS
from stemsplit.model import TSBSMamba2Config
from stemsplit.weights import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    OfflineError,
    RegistryError,
    UnknownModelError,
    UnsafeCheckpointError,
    load_model,
    load_registry,
)

CKPT = golden_ckpt_bytes()
SAFETENSORS = GOLDEN_WEIGHTS.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def registry(env: Path, **models: dict) -> Path:
    return write_registry(env / "weights.toml", models)


def cached_files(env: Path) -> list[Path]:
    """Everything in the cache but lock files."""
    root = env / "cache"
    return (
        sorted(p for p in root.rglob("*") if p.is_file() and "locks" not in p.parts) if root.exists() else []
    )


def assert_golden(loaded: weights.LoadedModel) -> None:
    golden = load_file(GOLDEN_WEIGHTS)
    state = loaded.model.state_dict()
    assert state.keys() == golden.keys()
    assert all(torch.equal(state[k], golden[k]) for k in golden)
    assert not loaded.model.training


# --- the shipped registry -------------------------------------------------------------------


def test_shipped_registry_is_valid_and_one_file(monkeypatch):
    monkeypatch.delenv("STEMSPLIT_REGISTRY", raising=False)
    registry = load_registry()
    assert registry.path.resolve() == (ROOT / "src" / "stemsplit" / "weights.toml").resolve()
    assert (ROOT / "weights.toml").resolve() == registry.path.resolve()  # root file is the packaged one
    entry = registry.models[registry.default]
    assert entry.name == "ts-musdb18hq"
    assert weights.entry_config(entry) == TSBSMamba2Config()  # 128 features, 8 + 4 layers, 4 outputs
    assert entry.stems == ("drums", "bass", "other", "vocals")
    assert entry.normalization == "none" and entry.sha256 == "" and not entry.light
    assert entry.filename == "model_bs_mamba2_ep_11_sdr_6.8723.ckpt"
    assert entry.sdr == pytest.approx(6.87)


# --- registry errors ------------------------------------------------------------------------


def test_registry_syntax_error_names_file_and_line(env):
    path = registry(env, tiny=tiny_entry(url="http://127.0.0.1:1/tiny.ckpt"))
    lines = path.read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if line.startswith("license"))
    lines[broken] = 'license = "MIT'  # unterminated string
    path.write_text("\n".join(lines))
    with pytest.raises(RegistryError, match=rf"weights\.toml:{broken + 1}: invalid TOML"):
        load_registry()


def test_registry_that_is_not_utf8_names_file_and_line(env):
    """Before: 'internal error: UnicodeDecodeError' from every command, doctor included."""
    path = registry(env, tiny=tiny_entry(url="http://127.0.0.1:1/tiny.ckpt"))
    path.write_bytes(path.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    line = path.read_bytes().count(b"\n")
    with pytest.raises(RegistryError, match=rf"weights\.toml:{line}: not UTF-8 text \(byte 0xe9\)"):
        load_registry()


def test_registry_field_typo_names_line_and_suggests(env):
    path = registry(env, tiny=tiny_entry(url="http://127.0.0.1:1/tiny.ckpt", stmes=["a"]))
    line = path.read_text().splitlines().index('stmes = ["a"]') + 1
    with pytest.raises(RegistryError, match=rf"weights\.toml:{line}: .*unknown field 'stmes' .*'stems'"):
        load_registry()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normalization", "mean", "normalization must be one of none, meanstd"),
        ("sha256", "abc", "sha256 must be 64 hex digits"),
        ("sample_rate", "44100", "field 'sample_rate' must be an integer, not str"),
        ("stems", ["a", "a"], "stems must be a list of distinct, non-empty names"),
        ("stems", ["a", "b/c", "d", "e"], "stems: 'b/c' is not a stem name"),
    ],
)
def test_registry_bad_value_names_line(env, field, value, message):
    path = registry(env, tiny=tiny_entry(url="http://127.0.0.1:1/tiny.ckpt", **{field: value}))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(f"{field} ="))
    with pytest.raises(RegistryError, match=rf"weights\.toml:{line}: \[models\.tiny\] {message}"):
        load_registry()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stems", ["a", "b"], "num_output = 4, but 2 stems are named"),
        ("architecture", "big", "unknown architecture 'big' \\(known: ts-bsmamba2"),
        ("preset", "xl", "ts-bsmamba2 has no preset 'xl'"),
        ("config", {"feature_dim": "wide"}, "ts-bsmamba2 config field feature_dim must be int"),
        ("config", {"depth": 3}, "ts-bsmamba2 config has no field 'depth'"),
    ],
)
def test_registry_architecture_is_checked_before_any_download(env, server, field, value, message):
    """The registry parses without torch; the family and its config are checked when the model is
    built, still naming the file and line, and before a byte is downloaded."""
    path = registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), **{field: value}))
    load_registry()  # parses: the architecture is not the registry's business
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(f"{field} ="))
    with pytest.raises(RegistryError, match=rf"weights\.toml:{line}: \[models\.tiny\] {message}"):
        load_model("tiny", progress=False)
    assert server.requests == [] and cached_files(env) == []


def test_registry_written_before_families_still_loads(env, server):
    """`architecture = "l-ts"` (a TS-BSMamba2 preset) was the schema before families."""
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), architecture="ts"))
    entry = load_registry().get("tiny")
    assert (entry.architecture, entry.preset) == ("ts-bsmamba2", "ts")
    assert_golden(load_model("tiny", progress=False))


def test_registry_missing_field_and_source(env):
    entry = tiny_entry(url="http://127.0.0.1:1/tiny.ckpt")
    del entry["license"]
    registry(env, tiny=entry)
    with pytest.raises(RegistryError, match=r"weights\.toml:3: \[models\.tiny\] missing field 'license'"):
        load_registry()
    registry(env, tiny=tiny_entry())
    with pytest.raises(RegistryError, match="exactly one source"):
        load_registry()


def test_unknown_model_lists_known_names(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    with pytest.raises(UnknownModelError, match=r"no model named 'tinny'.*did you mean 'tiny'"):
        load_model("tinny")


# --- download, convert, load ----------------------------------------------------------------


def test_download_ckpt_converts_once_and_loads(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    loaded = load_model("tiny", progress=False)
    assert_golden(loaded)
    assert (loaded.name, loaded.stems, loaded.sample_rate, loaded.normalization, loaded.light) == (
        "tiny",
        ("drums", "bass", "other", "vocals"),
        44100,
        "none",
        False,
    )
    directory = env / "cache" / "models" / "tiny"
    assert {p.name for p in cached_files(env)} == {
        "tiny.ckpt",
        "tiny.ckpt.sha256",  # trust on first use: the hash of the first download
        "tiny.safetensors",  # the one-time conversion later loads read
        "tiny.safetensors.sha256",
    }
    assert (directory / "tiny.ckpt").read_bytes() == CKPT
    assert (directory / "tiny.ckpt.sha256").read_text().strip() == sha256(CKPT)
    assert weights.cached_path("tiny") == directory / "tiny.safetensors"
    # A second load reads the cache: no request, no pickle.
    (directory / "tiny.ckpt").unlink()
    assert_golden(load_model("tiny", progress=False))
    assert len(server.requests) == 1


def test_download_safetensors_with_registry_sha256(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.safetensors"), sha256=sha256(SAFETENSORS).upper()))
    assert_golden(load_model("tiny", progress=False))
    assert {p.name for p in cached_files(env)} == {"tiny.safetensors"}  # registry hash: nothing to record
    assert load_model("tiny", progress=False).name == "tiny"
    assert len(server.requests) == 1


def test_default_and_light_model(env, server):
    registry(env, big=tiny_entry(url=server.url("tiny.ckpt")))
    assert not weights.has_light_model()
    assert load_model(None, light=True, progress=False).name == "big"  # no light model: the default
    from stemsplit.separate import Separator

    slower = Separator(
        light=True, device="cpu", download_progress=False
    )  # the engine makes light mean 1.5 s hops
    assert (slower.name, slower.hop) == ("big", round(1.5 * slower.sample_rate))
    registry(
        env,
        big=tiny_entry(url=server.url("tiny.ckpt")),
        small=tiny_entry(url=server.url("tiny.safetensors"), light=True),
    )
    assert weights.has_light_model() and weights.default_model_name(light=True) == "small"
    loaded = load_model(light=True, progress=False)
    assert (loaded.name, loaded.light) == ("small", True)
    light = Separator(light=True, device="cpu", download_progress=False)
    assert (light.name, light.hop) == ("small", round(light.card.hop * light.sample_rate))
    assert "light model (small)" in light.light_note
    assert Separator("big", light=True, device="cpu").hop == round(1.5 * light.sample_rate)  # a named model
    assert load_model(progress=False).name == "big"


def test_load_from_url_without_registry(env, server):
    loaded = load_model(server.url("tiny.ckpt"), progress=False)
    assert loaded.name == "tiny.ckpt" and loaded.stems == ("drums", "bass", "other", "vocals")
    assert_golden(loaded)
    load_model(server.url("tiny.ckpt"), progress=False)
    assert len(server.requests) == 1


def test_architecture_mismatch_lists_keys(env, server):
    config = {**tiny_entry()["config"], "num_repeat_mask": 3}
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), config=config))
    with pytest.raises(
        CheckpointError, match=r"num_repeat_mask 2 \(expected 3\).*missing: separator_mask\.2\."
    ):
        load_model("tiny", progress=False)


# --- interrupted transfers ------------------------------------------------------------------


def test_dropped_connection_is_resumed_with_range(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), sha256=sha256(CKPT)))
    server.drop["tiny.ckpt"] = 1  # the first response stops half way
    assert_golden(load_model("tiny", progress=False))
    first, second = server.requests_for("tiny.ckpt")
    assert first["range"] is None
    assert second["range"] == f"bytes={(len(CKPT)) // 2}-"
    assert (env / "cache" / "models" / "tiny" / "tiny.ckpt").read_bytes() == CKPT


def test_partial_file_from_an_earlier_run_is_resumed(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.safetensors")))
    directory = env / "cache" / "models" / "tiny"
    directory.mkdir(parents=True)
    (directory / "tiny.safetensors.part").write_bytes(SAFETENSORS[:12345])
    assert_golden(load_model("tiny", progress=False))
    assert [r["range"] for r in server.requests] == ["bytes=12345-"]
    assert (directory / "tiny.safetensors").read_bytes() == SAFETENSORS
    assert not (directory / "tiny.safetensors.part").exists()


def test_server_without_range_support_restarts(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), sha256=sha256(CKPT)))
    directory = env / "cache" / "models" / "tiny"
    directory.mkdir(parents=True)
    (directory / "tiny.ckpt.part").write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    assert_golden(load_model("tiny", progress=False))
    assert (directory / "tiny.ckpt").read_bytes() == CKPT


def test_http_error_is_a_clear_error(env, server):
    registry(env, tiny=tiny_entry(url=server.url("missing.ckpt")))
    with pytest.raises(DownloadError, match=r"tiny: http://127\.0\.0\.1:\d+/missing\.ckpt: HTTP 404"):
        load_model("tiny", progress=False)
    assert cached_files(env) == []


def test_checksum_mismatch_keeps_nothing(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), sha256="0" * 64))
    match = r"tiny: the download from http://127\.0\.0\.1:\d+/tiny\.ckpt has sha256 .* says 0{64}.*deleted"
    with pytest.raises(ChecksumError, match=match):
        load_model("tiny", progress=False)
    assert cached_files(env) == []


def test_size_mismatch_keeps_nothing(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt"), size=len(CKPT) + 1))
    with pytest.raises(ChecksumError, match=rf"downloaded {len(CKPT)} bytes, but the registry says"):
        load_model("tiny", progress=False)
    assert cached_files(env) == []


# --- offline mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["STEMSPLIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_without_cache_is_a_clear_error(env, server, monkeypatch, variable):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    monkeypatch.setenv(variable, "1")
    with pytest.raises(OfflineError, match=r"tiny is not in the cache .*`stemsplit models download tiny`"):
        load_model("tiny", progress=False)
    assert server.requests == []


def test_offline_with_cache_loads(env, server, monkeypatch):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    weights.fetch("tiny", progress=False)
    server.close()
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    assert_golden(load_model("tiny", progress=False))


def test_shipped_local_checkpoint_loads_offline_without_touching_the_cache(env, monkeypatch):
    """A ``path`` source (a file beside the registry, as the bundled demo model) needs no cache or network."""
    (env / "models").mkdir()
    shutil.copy(GOLDEN_WEIGHTS, env / "models" / "tiny.safetensors")
    registry(env, tiny=tiny_entry(path="models/tiny.safetensors", sha256=sha256(SAFETENSORS)))
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    monkeypatch.setenv("STEMSPLIT_CACHE", "/proc/unwritable-cache")  # any write would fail
    assert_golden(load_model("tiny", progress=False))
    assert weights.cached_path("tiny") == env / "models" / "tiny.safetensors"
    (result,) = weights.verify("tiny")
    assert result.status == "ok"


def test_shipped_local_checkpoint_is_verified_on_every_load(env):
    (env / "models").mkdir()
    target = env / "models" / "tiny.safetensors"
    shutil.copy(GOLDEN_WEIGHTS, target)
    registry(env, tiny=tiny_entry(path="models/tiny.safetensors", sha256=sha256(SAFETENSORS)))
    load_model("tiny", progress=False)
    data = bytearray(SAFETENSORS)
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    match = rf"tiny: {target} has sha256 .* but the registry says .*; reinstall stemsplit"
    with pytest.raises(ChecksumError, match=match):
        load_model("tiny", progress=False)
    target.unlink()
    with pytest.raises(CheckpointError, match=r"tiny: .*tiny\.safetensors is missing .* reinstall stemsplit"):
        load_model("tiny", progress=False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": "m.safetensors"}, "a local checkpoint \\(path\\) needs its sha256"),
        ({"path": "m.ckpt", "sha256": "0" * 64}, "must be a .safetensors file"),
        ({"path": "m.safetensors", "sha256": "0" * 64, "url": "http://x/m.ckpt"}, "give exactly one source"),
    ],
)
def test_local_source_rules(env, fields, message):
    registry(env, tiny=tiny_entry(**fields))
    with pytest.raises(RegistryError, match=message):
        load_registry()


def test_hugging_face_source(env, monkeypatch):
    """Hub sources go through hf_hub_download (its cache, revision, offline switch)."""
    import huggingface_hub

    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(GOLDEN_WEIGHTS)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    registry(env, tiny=tiny_entry(repo_id="someone/tiny", filename="w/tiny.safetensors", revision="v1"))
    assert_golden(load_model("tiny", progress=False))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model("tiny", progress=False)
    assert [(c["repo_id"], c["filename"], c["revision"], c["local_files_only"]) for c in calls] == [
        ("someone/tiny", "w/tiny.safetensors", "v1", False),
        ("someone/tiny", "w/tiny.safetensors", "v1", True),
    ]
    # trust on first use covers hub files too
    assert (env / "cache" / "models" / "tiny" / "tiny.safetensors.sha256").read_text().strip() == sha256(
        SAFETENSORS
    )


# --- concurrency ----------------------------------------------------------------------------


def test_two_processes_download_once(env, server):
    """One process downloads while the other waits on the lock; both get the same intact file."""
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    server.gate = threading.Event()  # hold the first response until both processes are running
    script = (
        "import sys; from stemsplit import weights; print('ready', flush=True); "
        "print(weights.fetch('tiny'), flush=True)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # let the second process reach the lock
        server.gate.set()
        outputs = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert paths == {str(env / "cache" / "models" / "tiny" / "tiny.safetensors")}
    assert len(server.requests) == 1
    assert any("waiting for another process" in err for _, err in outputs)
    assert (env / "cache" / "models" / "tiny" / "tiny.ckpt").read_bytes() == CKPT
    assert_golden(load_model("tiny", progress=False))


# --- safe loading ---------------------------------------------------------------------------


class Evil:
    """Unpickling this would create a file: the stand-in for arbitrary code in a checkpoint."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_checkpoint(marker: Path) -> bytes:
    import io

    evil = Evil()
    evil.marker = marker
    buffer = io.BytesIO()
    torch.save({**load_file(GOLDEN_WEIGHTS), "payload": evil}, buffer)
    return buffer.getvalue()


def test_malicious_pickle_is_refused_and_never_run(env, server, tmp_path):
    marker = tmp_path / "pwned"
    server.files["evil.ckpt"] = evil_checkpoint(marker)
    registry(env, evil=tiny_entry(url=server.url("evil.ckpt")))
    cached = env / "cache" / "models" / "evil" / "evil.ckpt"
    with pytest.raises(UnsafeCheckpointError, match=rf"evil: {cached}: refused: .*arbitrary pickle.*deleted"):
        load_model("evil", progress=False)
    assert cached_files(env) == []  # a download that is no plain checkpoint is not kept
    local = tmp_path / "evil.pth"
    local.write_bytes(server.files["evil.ckpt"])
    with pytest.raises(UnsafeCheckpointError):
        load_model(local)
    assert not marker.exists()
    assert not (env / "cache" / "models" / "evil" / "evil.safetensors").exists()


def test_garbage_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=rf"^{path}: not a readable checkpoint: a text file$"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "missing.safetensors")


def test_local_checkpoints_with_wrappers_and_metadata(tmp_path):
    golden = load_file(GOLDEN_WEIGHTS)
    wrapped = tmp_path / "trainer.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in golden.items()}}, wrapped)
    loaded = load_model(str(wrapped))
    assert_golden(loaded)
    assert (loaded.name, loaded.stems, loaded.normalization) == (
        "trainer.ckpt",
        MUSIC_STEMS,
        "none",
    )

    tagged = tmp_path / "tagged.safetensors"
    metadata = {"stems": "a, b, c, d", "sample_rate": "44100", "normalization": "meanstd"}
    save_file(golden, tagged, metadata=metadata)
    loaded = load_model(tagged)
    assert (loaded.stems, loaded.sample_rate, loaded.normalization) == (
        ("a", "b", "c", "d"),
        44100,
        "meanstd",
    )
    save_file(golden, tagged, metadata={"stems": "a,b"})
    with pytest.raises(CheckpointError, match="metadata names 2 stems but the network has 4 outputs"):
        load_model(tagged)
    # Each name becomes a file name: before, 'dr\nums' and 'a/b' were written as such (a subfolder).
    for bad in ("dr\nums", "a/b", "..", ".hidden"):
        save_file(golden, tagged, metadata={"stems": f"{bad},b,c,d"})
        with pytest.raises(
            CheckpointError, match=f"metadata stems: {re.escape(repr(bad))} is not a stem name"
        ):
            load_model(tagged)


# --- trust on first use ---------------------------------------------------------------------


def test_tofu_hash_then_tampering_detected(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.safetensors")))
    load_model("tiny", progress=False)
    record = env / "cache" / "models" / "tiny" / "tiny.safetensors.sha256"
    assert record.read_text().strip() == sha256(SAFETENSORS)
    assert [r.status for r in weights.verify()] == ["ok"]
    cached = env / "cache" / "models" / "tiny" / "tiny.safetensors"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    (result,) = weights.verify("tiny")
    assert result.status == "mismatch" and "recorded on first use" in result.detail
    with pytest.raises(ChecksumError, match="recorded on first use"):
        load_model("tiny", progress=False)


def test_tampered_conversion_detected(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    converted = weights.fetch("tiny", progress=False)
    tensors = load_file(converted)
    tensors["in_conv.bias"] = tensors["in_conv.bias"] + 1
    save_file(tensors, converted)
    assert weights.verify("tiny")[0].status == "mismatch"
    with pytest.raises(ChecksumError):
        load_model("tiny", progress=False)


# --- the converted file (issue 12) ----------------------------------------------------------


def test_conversion_without_its_record_is_made_afresh_not_trusted(env, server, monkeypatch):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    converted = weights.fetch("tiny", progress=False)
    record = converted.with_name(converted.name + ".sha256")
    # Tampered AND its record removed: the conversion cannot be checked, so it is made again from
    # the (verified) download instead of being loaded.
    tensors = load_file(converted)
    tensors["in_conv.bias"] = tensors["in_conv.bias"] + 1
    save_file(tensors, converted)
    record.unlink()
    assert weights.verify("tiny")[0].status == "unverified"
    assert_golden(load_model("tiny", progress=False))
    assert record.read_text().strip() == sha256(converted.read_bytes())
    assert len(server.requests) == 1  # re-made from the cached download, not downloaded again

    # Without the download, and offline, an unverifiable conversion is refused, not loaded.
    record.unlink()
    (converted.parent / "tiny.ckpt").unlink()
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    with pytest.raises(OfflineError):
        load_model("tiny", progress=False)


def test_conversion_of_another_download_is_made_afresh(env, server):
    """A conversion whose source hash is not that of the recorded download is stale: convert again."""
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    converted = weights.fetch("tiny", progress=False)
    tensors = load_file(converted)
    tensors["in_conv.bias"] = tensors["in_conv.bias"] + 1
    save_file(tensors, converted, metadata={"source": "tiny.ckpt", "source_sha256": "f" * 64})
    converted.with_name(converted.name + ".sha256").write_text(sha256(converted.read_bytes()) + "\n")
    assert_golden(load_model("tiny", progress=False))


def test_tampered_conversion_names_the_file_and_how_to_clear_it(env, server):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    converted = weights.fetch("tiny", progress=False)
    data = bytearray(converted.read_bytes())
    data[-1] ^= 0xFF
    converted.write_bytes(bytes(data))
    record = converted.with_name(converted.name + ".sha256")
    with pytest.raises(ChecksumError) as info:
        load_model("tiny", progress=False)
    message = str(info.value)
    assert message.startswith(f"tiny: {converted} has sha256 ")
    assert message.endswith(f"delete {converted} and {record} and run `stemsplit models download tiny` again")
    converted.unlink()  # following the advice works
    record.unlink()
    assert_golden(load_model("tiny", progress=False))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cached_files_get_the_usual_permissions(env, server, umask):
    """Downloads, conversions and hash records: 0666 minus the umask (not safetensors' 0600)."""
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    old = os.umask(umask)
    try:
        weights.fetch("tiny", progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in cached_files(env)}
    assert len(modes) == 4 and set(modes.values()) == {0o666 & ~umask}, modes


# --- trust on first use only for checkpoints ------------------------------------------------

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"


@pytest.mark.parametrize("name", ["tiny.ckpt", "tiny.safetensors"])
def test_html_page_served_with_200_is_not_cached_or_pinned(env, server, name):
    registry(env, tiny=tiny_entry(url=server.url(name)))
    good = server.files[name]
    server.files[name] = HTML  # a login or error page answered with "200 OK"
    with pytest.raises(CheckpointError) as info:
        load_model("tiny", progress=False)
    message = str(info.value)
    assert message.startswith(f"tiny: {env / 'cache' / 'models' / 'tiny' / name}: not a readable")
    assert "the server sent an HTML page" in message and message.endswith("the download was deleted")
    assert cached_files(env) == []  # nothing kept, no hash recorded
    server.files[name] = good  # the server is fixed: the next run succeeds
    assert_golden(load_model("tiny", progress=False))
    record = env / "cache" / "models" / "tiny" / f"{name}.sha256"
    assert record.read_text().strip() == sha256(good)


def test_damaged_cached_download_says_how_to_clear_it(env, server):
    """A registry-hashed file damaged in the cache: the error names it and the fix, which works."""
    registry(env, tiny=tiny_entry(url=server.url("tiny.safetensors"), sha256=sha256(SAFETENSORS)))
    cached = weights.fetch("tiny", progress=False)
    cached.write_bytes(SAFETENSORS[:1000])
    with pytest.raises(ChecksumError) as info:
        load_model("tiny", progress=False)
    assert str(info.value).startswith(f"tiny: {cached} has sha256 ")
    assert str(info.value).endswith(f"delete {cached} and run `stemsplit models download tiny` again")
    cached.unlink()
    assert_golden(load_model("tiny", progress=False))


# --- a cache that cannot be written ---------------------------------------------------------


def run_read_only(folder: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``folder`` read-only: chmod for a normal user; as root (which ignores file
    modes) a read-only bind mount in a private mount namespace (unshare -m), invisible outside."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", folder], check=True)
        try:
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        finally:
            subprocess.run(["chmod", "-R", "u+w", folder], check=True)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && touch "$0/probe" 2>/dev/null'
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{script}; test $? -ne 0", folder], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    wrapped = [
        "unshare",
        "-m",
        "sh",
        "-c",
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"',
    ]
    return subprocess.run(
        [*wrapped, str(folder), *argv], env=env, capture_output=True, text=True, timeout=300
    )


def test_read_only_cache_still_loads_what_it_holds(env, server):
    registry(
        env,
        tiny=tiny_entry(url=server.url("tiny.ckpt")),
        small=tiny_entry(url=server.url("tiny.safetensors")),
        other=tiny_entry(url=server.url("tiny.safetensors")),
    )
    weights.fetch("tiny", progress=False)
    weights.fetch("small", progress=False)
    shutil.rmtree(env / "cache" / "locks")  # as if copied without them to an offline machine
    cache = env / "cache"
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    stemsplit = shutil.which("stemsplit")
    script = (
        "from stemsplit.weights import load_model\nfor n in ('tiny', 'small'): load_model(n, progress=False)"
    )
    result = run_read_only(cache, [sys.executable, "-c", script], os.environ.copy())
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run_read_only(cache, [stemsplit, "models", "download", "tiny", "-q"], os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cache / "models" / "tiny" / "tiny.safetensors")
    # A model it does not hold: one line naming the setting and the file, no traceback.
    result = run_read_only(cache, [stemsplit, "models", "download", "other"], os.environ.copy())
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"stemsplit: error: STEMSPLIT_CACHE={cache}: {cache / 'models' / 'other'}"
    )
    assert "read-only file system" in result.stderr or "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before  # nothing written


def test_lock_folder_that_cannot_be_made_is_not_fatal(env, server):
    """``locks`` is a file (so no lock file can be made there): loading and downloading still work."""
    registry(
        env,
        tiny=tiny_entry(url=server.url("tiny.ckpt")),
        small=tiny_entry(url=server.url("tiny.safetensors")),
    )
    weights.fetch("tiny", progress=False)
    shutil.rmtree(env / "cache" / "locks")
    (env / "cache" / "locks").write_text("not a folder")
    assert_golden(load_model("tiny", progress=False))
    assert_golden(load_model("small", progress=False))


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_unusable_cache_setting_is_one_line_naming_the_variable(env, server, monkeypatch, kind):
    registry(env, tiny=tiny_entry(url=server.url("tiny.ckpt")))
    blocker = env / "not-a-folder"
    blocker.write_text("")
    cache = blocker if kind == "file" else blocker / "cache"
    monkeypatch.setenv("STEMSPLIT_CACHE", str(cache))
    result = cli("models", "download", "tiny")
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    if kind == "file":
        assert line == (
            f"stemsplit: error: STEMSPLIT_CACHE={cache}: is a file, not a folder; "
            "set STEMSPLIT_CACHE to a writable folder"
        )
    else:
        assert (
            line.startswith(f"stemsplit: error: STEMSPLIT_CACHE={cache}: {cache}")
            and "not a directory" in line
        )
    assert server.requests == []


# --- progress=False prints nothing ----------------------------------------------------------


def output_in_a_terminal(script: str, env: dict[str, str]) -> bytes:
    """stdout and stderr of ``python -c script`` run on a pseudo-terminal (where bars do show)."""
    import fcntl
    import pty
    import struct
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=child, stderr=child)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(parent, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(parent)
    assert proc.wait(timeout=300) == 0, output.decode(errors="replace")
    return output


@pytest.mark.parametrize("progress", [False, True])
def test_progress_false_prints_nothing(env, server, progress):
    """Downloads (ours and huggingface_hub's), conversion, cached loads: silent without progress."""
    server.files["someone/tiny/resolve/main/tiny.ckpt"] = CKPT  # the Hub API, served locally
    registry(
        env,
        tiny=tiny_entry(url=server.url("tiny.ckpt")),
        hub=tiny_entry(repo_id="someone/tiny", filename="tiny.ckpt"),
    )
    environment = {**os.environ, "HF_ENDPOINT": server.url("").rstrip("/"), "HF_HOME": str(env / "hf")}
    environment.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    script = (
        "from stemsplit.weights import load_model\n"
        f"for spec in ('tiny', 'tiny', 'hub', {server.url('tiny.safetensors')!r}):\n"
        f"    load_model(spec, progress={progress})\n"
    )
    output = output_in_a_terminal(script, environment)
    assert any(r["path"] == "someone/tiny/resolve/main/tiny.ckpt" for r in server.requests)
    if progress:
        assert b"tiny" in output and b"%" in output  # the control: with progress on, bars do show here
    else:
        assert output == b""


def test_metadata_that_does_not_fit_the_weights_is_named_before_any_memory_is_taken(tmp_path):
    """Before: the network of the metadata's config was built before its shapes were compared with the
    weights: a checkpoint whose config was edited to feature_dim 8192 asked for about 100 GB (exit 70 under a
    memory limit, the OOM killer without one)."""
    from safetensors import safe_open

    demo = ROOT / "src" / "stemsplit" / "checkpoints" / "demo.safetensors"
    with safe_open(str(demo), "pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    config.update(feature_dim=8192, num_repeat_mask=64)
    save_file(
        load_file(demo), tmp_path / "huge.safetensors", metadata={**metadata, "config": json.dumps(config)}
    )
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from stemsplit.weights import CheckpointError, load_model\n"
        "try:\n"
        f"    load_model({str(tmp_path / 'huge.safetensors')!r}, progress=False)\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
    )
    result = python("-c", code, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (
        "architecture differs from the checkpoint's metadata: the checkpoint has feature_dim 32"
        in result.stdout
    )

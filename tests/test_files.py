"""Atomic writes: whole files or nothing, with ordinary permissions."""

import os

import pytest
import torch

from stemsplit.files import temporary_sibling, write_atomically
from stemsplit.model import TSBSMamba2
from stemsplit.train.loop import export_safetensors


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_atomically_replaces_whole_and_keeps_permissions(tmp_path, umask_022):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_atomically(target, lambda temp: temp.write_text("new"))
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["report.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail_half_way(temp):
        temp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, fail_half_way)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_temporary_siblings_are_hidden_distinct_and_in_the_same_folder(tmp_path, umask_022):
    a, b = (
        temporary_sibling(tmp_path / "x.wav", ".partial"),
        temporary_sibling(tmp_path / "x.wav", ".partial"),
    )
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".x.wav.") and a.name.endswith(".partial")
    assert a.stat().st_mode & 0o777 == 0o644 and a.stat().st_size == 0


def test_exported_checkpoints_are_readable_by_others(tmp_path, umask_022):
    """safetensors alone would create 0600 files; an exported model is meant to be shared."""
    torch.manual_seed(0)
    model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1)
    export_safetensors(model, tmp_path / "best.safetensors", ("drums", "bass", "other", "vocals"))
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o644

"""MUSDB18-HQ-layout test sets of any stems: a track's stems are its files beside mixture.wav."""

import pytest

from stemsplit.datasets.musdb_layout import DatasetError, track_stems


def test_a_test_sets_stems_are_its_files(tmp_path):
    for track, names in (("a", ["mixture", "vocals", "guitar"]), ("b", ["mixture", "piano", ".vocals"])):
        (tmp_path / track).mkdir()
        for name in names:
            (tmp_path / track / f"{name}.wav").write_bytes(b"")
    assert track_stems([tmp_path / "a", tmp_path / "b"]) == ("guitar", "piano", "vocals")  # any track's
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mixture.wav").write_bytes(b"")
    with pytest.raises(
        DatasetError, match=r"c: no stem files \(expected .*c/<stem>.wav beside mixture.wav\)"
    ):
        track_stems([tmp_path / "c"])

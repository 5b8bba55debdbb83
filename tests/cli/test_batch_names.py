"""batch: a name once given stays, and every song is accounted for (issue 33, part 5).

Through the real CLI in this process, on real folders: names given to songs that share a {track}
are recorded and kept when new songs come; a moved or copied input folder is not separated again
(the manifest's content-hash fallback); a song reached twice (hard or symbolic link) is separated
once and said so; overlapping input folders give one layout whatever their order.
"""

import json
import os
import shutil

import pytest
from helpers import FAST, FOUR_STEMS, cli, files_under, json_events, leave_claim, song


def batch(folder, out, model, *extra, check=None):
    return cli("batch", *([folder] if not isinstance(folder, list) else folder), "-o", out, "--model", model,
               *FAST, "--json", *extra, check=check)  # fmt: skip


def events(result, kind):
    return [e for e in json_events(result) if e["event"] == kind]


def stem_identity(folder):
    """(inode, mtime) of every stem file under ``folder``: unchanged when nothing was written there."""
    return {
        f: (os.stat(folder / f).st_ino, os.stat(folder / f).st_mtime_ns) for f in files_under(folder, False)
    }


@pytest.mark.parametrize(
    "template",
    ["{folder}/{track}/{stem}.{ext}", "{track}_{stem}.{ext}"],
    ids=["nested", "flat"],
)
def test_a_name_once_given_stays_when_a_clashing_song_comes(tmp_path, stub_checkpoint, template):
    """Before: a.flac and a.wav got a and a (2); an a.ogg added later took a (2), a.wav moved to a (3), and
    with a flat template every song of the clash was separated again."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.flac", subtype="PCM_16")
    song(music / "a.wav")
    first = batch(music, out, stub_checkpoint, "--filename", template, check=0)
    given = {e["source"]: e["outputs"]["vocals"] for e in events(first, "result")}
    before = stem_identity(out)
    song(music / "a.ogg", fmt="OGG", subtype="VORBIS")  # sorts between the two
    second = batch(music, out, stub_checkpoint, "--filename", template, check=0)
    assert [e["source"] for e in events(second, "result")] == [str(music / "a.ogg")]
    assert sorted(e["source"] for e in events(second, "skipped")) == sorted(given)
    assert {f: before[f] for f in before} == {f: stem_identity(out)[f] for f in before}  # untouched
    new = events(second, "result")[0]["outputs"]["vocals"]
    assert "a (3)" in new and new not in given.values()
    os.unlink(music / "a.flac")  # the song that had "a" goes: a.wav keeps "a (2)", a.ogg "a (3)"
    third = batch(music, out, stub_checkpoint, "--filename", template, check=0)
    assert not events(third, "result") and len(events(third, "skipped")) == 2


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_input_folder_is_not_separated_again(tmp_path, stub_checkpoint, how):
    """Before: every song was separated again, although the docs promised the content-hash fallback.
    Copied files have new inodes, mtimes and ctimes: only their bytes say they are the same songs."""
    music, out = tmp_path / "music", tmp_path / "out"
    (music / "Album").mkdir(parents=True)
    song(music / "Album" / "a.wav")
    song(music / "Album" / "a.flac", subtype="PCM_16")  # with a name given: a (2)
    batch(music, out, stub_checkpoint, check=0)
    before = stem_identity(out)
    moved = tmp_path / "elsewhere" / "music"
    moved.parent.mkdir()
    (shutil.move if how == "moved" else shutil.copytree)(music, moved)
    again = batch(moved, out, stub_checkpoint, check=0)
    assert not events(again, "result") and len(events(again, "skipped")) == 2
    assert stem_identity(out) == before
    manifests = [json.loads(p.read_text()) for p in (out / ".stemsplit" / "done").glob("*.json")]
    assert sorted(m["source"] for m in manifests) == sorted(  # brought up to date: no reading next time
        os.path.realpath(moved / "Album" / name) for name in ("a.flac", "a.wav")
    )
    (moved / "Album" / "a.wav").write_bytes((moved / "Album" / "a.wav").read_bytes()[:-4])  # now it differs
    third = batch(moved, out, stub_checkpoint, check=0)
    assert [e["source"] for e in events(third, "result")] == [str(moved / "Album" / "a.wav")]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_song_reached_twice_is_separated_once_and_said_so(tmp_path, stub_checkpoint, link):
    """Before: ``ln A/x.wav B/y.wav`` left B/y.wav without stems and without a word."""
    music, out = tmp_path / "music", tmp_path / "out"
    (music / "A").mkdir(parents=True)
    (music / "B").mkdir()
    song(music / "A" / "x.wav")
    (os.link if link == "hard" else os.symlink)(music / "A" / "x.wav", music / "B" / "y.wav")
    result = batch(music, out, stub_checkpoint, check=0)
    assert [e["source"] for e in events(result, "result")] == [str(music / "A" / "x.wav")]
    (skipped,) = events(result, "skipped")
    assert skipped == {
        "event": "skipped", "source": str(music / "B" / "y.wav"), "reason": "same file",
        "same_as": str(music / "A" / "x.wav"),
    }  # fmt: skip
    plain = cli("batch", music, "-o", tmp_path / "out2", "--model", stub_checkpoint, *FAST, check=0)
    assert f"{music / 'B' / 'y.wav'}: same file as {music / 'A' / 'x.wav'}" in plain.stderr


def test_two_names_of_one_file_given_to_separate_are_said_once(tmp_path, stub_checkpoint):
    """``stemsplit x.wav link.wav``: separated once, and one line says why link.wav has no stems."""
    song(tmp_path / "x.wav")
    os.symlink(tmp_path / "x.wav", tmp_path / "link.wav")
    args = [tmp_path / "x.wav", tmp_path / "link.wav", "-o", tmp_path / "out", "--model", stub_checkpoint]
    result = cli(*args, *FAST, check=0)
    assert f"{tmp_path / 'link.wav'}: same file as {tmp_path / 'x.wav'}" in result.stderr
    assert files_under(tmp_path / "out") == [f"x/{s}" for s in FOUR_STEMS]


@pytest.mark.parametrize("order", ["outer first", "inner first"])
def test_a_folder_inside_another_input_is_walked_as_part_of_it(tmp_path, stub_checkpoint, order):
    """Before: ``batch music music/A`` called music/A 'a symbolic link loop', and ``batch music/A music``
    put A's songs at the top of -o: the layout depended on the order of the arguments."""
    music = tmp_path / "music"
    (music / "A").mkdir(parents=True)
    song(music / "A" / "x.wav")
    song(music / "y.wav")
    folders = [music, music / "A"] if order == "outer first" else [music / "A", music]
    result = cli("batch", *folders, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    assert files_under(tmp_path / "out", state=False) == sorted(
        [f"A/x/{s}" for s in FOUR_STEMS] + [f"y/{s}" for s in FOUR_STEMS]
    )
    assert "loop" not in result.stderr
    assert f"{music / 'A'}: inside {music}, walked as part of it" in result.stderr


# --- claims: a song left undone is never exit 0 --------------------------------------------------


@pytest.fixture
def quick_claims(monkeypatch):
    """Claims on a short clock: looked at again every 0.1 s, a dead holder's taken over after 1 s."""
    from stemsplit import batch as batch_module
    from stemsplit.batch import claims

    monkeypatch.setattr(batch_module, "CLAIM_POLL_SECONDS", 0.1)  # the CLI reads it from stemsplit.batch
    monkeypatch.setattr(claims, "CLAIM_LEASE_SECONDS", 1.0)
    return batch_module


@pytest.mark.parametrize(
    "left_by",
    ["a restarted container, same host name and pid", "a pod on another host"],
)
def test_a_dead_holders_fresh_claim_is_taken_over_never_exit_0_without_stems(
    tmp_path, stub_checkpoint, quick_claims, left_by
):
    """Before: the rerun honoured the dead pod's claim for 10 minutes and exited 0 with a song that had no
    stems; a container restarted with its host name and pid (pid 1 is common) held its own claim for ever
    (its pid was alive: its own). Now the run waits for the claim, watches it stay untouched for the lease
    (1 s here, CLAIM_LEASE_SECONDS), takes it over and separates the song."""
    import socket

    from stemsplit.files import host_tag

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    song(music / "b.wav")
    if left_by.startswith("a restarted"):
        fields = {
            "host": host_tag(),
            "space": "0dead0ff",
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }
    else:
        fields = {"host": "0ther0st", "space": "0ther0st", "hostname": "pod-7f9c", "pid": 1}
    leave_claim(out, music, "a.wav", **fields)
    result = batch(music, out, stub_checkpoint)
    assert result.returncode == 0, result.stderr
    (waiting,) = events(result, "waiting")
    assert waiting["source"] == str(music / "a.wav") and str(fields["pid"]) in waiting["holder"]
    assert sorted(e["source"] for e in events(result, "result")) == [
        str(music / n) for n in ("a.wav", "b.wav")
    ]
    assert files_under(out, state=False) == sorted(f"{t}/{s}" for t in "ab" for s in FOUR_STEMS)
    assert not list((out / ".stemsplit" / "claims").iterdir())


def test_a_run_waits_for_a_song_a_live_process_is_separating(tmp_path, stub_checkpoint, quick_claims):
    """A live holder (this process, another run) is left to finish; the run ends when the song is done
    (here the holder gives it up after a moment, and the run separates it), not before with exit 0."""
    import threading

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    from stemsplit.batch import process_space

    holder = leave_claim(out, music, "a.wav", space=process_space(), pid=os.getpid())  # alive: this one
    threading.Timer(1.5, holder.path.unlink).start()  # longer than the lease: a live holder is never dead
    result = batch(music, out, stub_checkpoint, check=0)
    assert [e["event"] for e in json_events(result)].count("waiting") == 1
    assert [e["source"] for e in events(result, "result")] == [str(music / "a.wav")]

"""``batch`` separates every song into its own place, exactly once, and never skips a changed song:
mirrored trees, changed and swapped files, junk among its records, claims shared and raced by processes
(docs/guarantees.md, "Several processes, one catalogue")."""

import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    StubNet,
    cli,
    dead_pid,
    files_under,
    json_events,
    song,
)


def test_batch_mirrors_the_tree_so_songs_never_share_stems(tmp_path, stub_checkpoint):
    """Before: Album B/01 Intro.wav was 'skipped' with Album A's stems, exit 0."""
    music = tmp_path / "music"
    for album, channels in (("Album A", 1), ("Album B", 2)):
        (music / album).mkdir(parents=True)
        song(music / album / "01 Intro.wav", channels=channels)
    cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    for album, channels in (("Album A", 1), ("Album B", 2)):
        assert sf.info(str(tmp_path / "out" / album / "01 Intro" / "vocals.wav")).channels == channels


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_song_that_changes_while_it_is_separated_is_separated_again(
    tmp_path, stub_checkpoint, monkeypatch, change
):
    """Before: a song replaced while batch read it was recorded as done with the new file's identity, so
    the next run skipped it and its stems stayed those of the old file; a removed one said 'No such file
    (batch's records)'.

    The song changes at the network's first call, after batch recorded what it started from and before
    it commits: in this process, with the stand-in network (it was a 20 s song in a child process, run
    by the tiny TS-BSMamba2 so that it would still be separating when the test changed the file)."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "s.wav")
    song(tmp_path / "new.wav", scale=0.1)
    forward = StubNet.forward

    def change_the_song_at_the_first_call(self, mixture):
        if (tmp_path / "new.wav").exists():
            if change == "replaced":
                os.replace(tmp_path / "new.wav", music / "s.wav")
            else:
                os.unlink(music / "s.wav")
                os.unlink(tmp_path / "new.wav")
        return forward(self, mixture)

    monkeypatch.setattr(StubNet, "forward", change_the_song_at_the_first_call)
    args = ["batch", music, "-o", out, "--model", stub_checkpoint, *FAST]
    result = cli(*args, "--json")
    assert result.returncode == 1, result.stderr
    (error,) = [e for e in json_events(result) if e["event"] == "error"]
    said = "it was written to or replaced" if change == "replaced" else "it is gone: removed or renamed"
    assert error["message"].startswith(f"{music / 's.wav'}: changed or went while it was read ({said})")
    if change == "replaced":
        again = cli(*args, "--json", check=0)  # separated again: not skipped, not refused
        assert [e["event"] for e in json_events(again)].count("result") == 1
        assert cli(*args, "--json", check=0).stdout.count('"skipped"') == 1  # now it is done


def test_batch_separates_again_what_changed_and_skips_what_did_not(tmp_path, stub_checkpoint):
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    song(music / "b.wav")
    m = ["--model", stub_checkpoint, *FAST, "--json"]

    def results(*extra):
        run = cli("batch", music, "-o", out, *m, *extra, check=0)
        events = json_events(run)
        return sorted(os.path.basename(e["source"]) for e in events if e["event"] == "result")

    assert results() == ["a.wav", "b.wav"]
    assert results() == []  # all done
    os.utime(music / "a.wav")  # touched, same bytes: still done
    assert results() == []
    song(music / "b.wav", scale=0.1)  # changed: separated again, its old stems replaced
    assert results() == ["b.wav"]
    assert results("--stage", "1") == ["a.wav", "b.wav"]  # other settings: separated again
    assert results("--stage", "1") == []


def test_batch_with_other_stems_replaces_its_own_stems_and_never_skips_on_a_stale_record(
    tmp_path, stub_checkpoint
):
    """Before: a second run with --stems needed --overwrite for stems stemsplit itself had written; and
    with it, the first run's record still said 'done' for the stems the second run had replaced, so a
    third run with the first run's settings skipped the song and kept stage-1 drums as stage-2 ones."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST, "--json"]

    def batch(*extra):
        run = cli("batch", music, "-o", out, *m, *extra, check=0)
        events = json_events(run)
        return [e["event"] for e in events if e["event"] in ("result", "skipped", "error")]

    def drums():
        return sf.read(out / "a" / "drums.wav")[0]

    assert batch() == ["result"]
    stage2 = drums()
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["result"]  # no --overwrite: ours
    assert files_under(out, state=False) == [f"a/{s}" for s in FOUR_STEMS]
    stage1 = drums()
    assert not np.allclose(stage1, stage2)
    assert batch() == ["result"]  # the first run's record no longer describes drums.wav
    np.testing.assert_array_equal(drums(), stage2)
    assert batch() == ["skipped"]
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["result"]
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["skipped"]


def test_batch_still_refuses_files_it_did_not_write(tmp_path, stub_checkpoint):
    """A file of the user's at a stem's path, or a stem the user edited, is named and left as it was."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    stems = {name: (out / "a" / name).read_bytes() for name in FOUR_STEMS}
    (out / "a" / "no_vocals.wav").write_bytes(b"the user's own file")
    run = cli("batch", music, "-o", out, *m, "--two-stems", "vocals")
    assert run.returncode == 1 and "--overwrite" in run.stderr
    assert run.stderr.count("\n") == 1 and "no_vocals.wav already exists" in run.stderr
    assert (out / "a" / "no_vocals.wav").read_bytes() == b"the user's own file"
    assert "skipped: done earlier" in cli("batch", music, "-o", out, *m, check=0).stderr  # still done

    edited = out / "a" / "drums.wav"
    edited.write_bytes(stems["drums.wav"][:-4] + b"\0\0\0\1")  # the user's edit of a stem
    run = cli("batch", music, "-o", out, *m, "--stage", "1")  # other settings: separated again
    assert run.returncode == 1 and "drums.wav already exists" in run.stderr, run.stderr
    assert edited.read_bytes().endswith(b"\0\0\0\1")
    assert (out / "a" / "bass.wav").read_bytes() == stems["bass.wav"]  # nothing of the song was written

    shutil.copy2(out / "a" / "bass.wav", tmp_path / "bass.wav")  # copied away and back: the same bytes
    os.replace(tmp_path / "bass.wav", out / "a" / "bass.wav")
    edited.write_bytes(stems["drums.wav"])
    cli("batch", music, "-o", out, *m, "--stage", "1", check=0)
    assert (out / "a" / "bass.wav").read_bytes() != stems["bass.wav"]


@pytest.mark.parametrize("junk", ["fifo", "folder", "huge", "list", "state is a file"])
def test_batch_survives_junk_among_its_manifests(tmp_path, stub_checkpoint, junk):
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    done = out / ".stemsplit" / "done"
    if junk == "state is a file":
        shutil.rmtree(done)
        done.write_text("not a folder")
    elif junk == "fifo":
        os.mkfifo(done / "zz.json")
    elif junk == "folder":
        (done / "zz.json").mkdir()
    elif junk == "huge":
        (done / "zz.json").write_text('{"outputs": {"drums": "a/drums.wav"}, "pad": "' + "x" * 2**21 + '"}')
    else:
        (done / "zz.json").write_text('["a/drums.wav"]')
    run = cli("batch", music, "-o", out, *m, "--stems", "drums", timeout=120)
    if junk == "state is a file":  # one line naming the problem, no traceback
        assert run.returncode == 1 and "Traceback" not in run.stderr and ".stemsplit" in run.stderr
    else:  # junk vouches for nothing and hangs nothing: drums.wav is the first run's, so it is replaced
        assert run.returncode == 0, run.stderr


def test_batch_notices_swapped_files_with_the_same_size_and_mtime(tmp_path, stub_checkpoint):
    """Unpacked from an archive, two songs have the same size and mtime; swapping them must not go unseen."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav", scale=0.5)
    song(music / "b.wav", scale=0.05)
    for name in ("a.wav", "b.wav"):
        os.utime(music / name, ns=(10**18, 10**18))
    m = ["--model", stub_checkpoint, *FAST, "--json"]
    cli("batch", music, "-o", out, *m, check=0)
    os.rename(music / "a.wav", music / "t.wav")
    os.rename(music / "b.wav", music / "a.wav")
    os.rename(music / "t.wav", music / "b.wav")
    run = cli("batch", music, "-o", out, *m, check=0)
    events = json_events(run)
    done = sorted(os.path.basename(e["source"]) for e in events if e["event"] == "result")
    assert done == ["a.wav", "b.wav"]
    loud, _ = sf.read(out / "b" / "vocals.wav")  # b is the loud song now
    quiet, _ = sf.read(out / "a" / "vocals.wav")
    assert np.abs(loud).max() > 3 * np.abs(quiet).max()


def test_batch_does_not_depend_on_how_the_input_folder_is_spelled(tmp_path, stub_checkpoint):
    """Before: the same folder reached through a link was taken for other songs and separated again."""
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    song(music / "sub" / "a.wav")
    (tmp_path / "link").symlink_to(music)
    m = ["-o", "out", "--model", stub_checkpoint, *FAST, "--json"]
    events = {}
    for spelling in ("music/", "./link", str(tmp_path / "music" / "sub" / ".." / ".")):
        run = cli("batch", spelling, *m, cwd=tmp_path, check=0)
        events[spelling] = [json.loads(line)["event"] for line in run.stdout.splitlines()]
    assert [e.count("result") for e in events.values()] == [1, 0, 0], events
    assert [e.count("skipped") for e in events.values()] == [0, 1, 1], events
    assert files_under(tmp_path / "out", state=False) == [f"sub/a/{s}" for s in FOUR_STEMS]


def test_batch_separates_songs_that_share_a_name_in_one_folder(tmp_path, stub_checkpoint):
    """a.wav and a.flac side by side: both are separated (a and a (2)), not a usage error for the folder."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    song(music / "a.flac", subtype="PCM_16")
    song(music / "b.wav")
    cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    folders = {p.split("/")[0] for p in files_under(tmp_path / "out", state=False)}
    assert folders == {"a", "a (2)", "b"}


def test_batch_never_plans_a_stem_file_where_another_song_needs_a_folder(tmp_path, stub_checkpoint):
    """a.wav writes out/a/drums.wav; a/drums.wav.wav writes into the folder out/a/drums.wav. Before: the
    second song failed after the first was done, telling the user to add --overwrite (which failed too)."""
    music = tmp_path / "music"
    (music / "a").mkdir(parents=True)
    song(music / "a.wav")
    song(music / "a" / "drums.wav.wav")
    result = cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "out", state=False) == sorted(
        [*(f"a (2)/{s}" for s in FOUR_STEMS), *(f"a/drums.wav/{s}" for s in FOUR_STEMS)]
    )


def test_a_stem_file_where_another_song_needs_a_folder_is_named_when_names_cannot_change(tmp_path):
    from stemsplit.output import OutputError, OutputOptions, SongSource, plan_outputs

    songs = [SongSource(tmp_path / "a.wav"), SongSource(tmp_path / "a" / "drums.wav.wav", "a")]
    out = tmp_path / "out"
    for order in (songs, songs[::-1]):  # a file where a folder goes, and a folder where a file goes
        with pytest.raises(OutputError, match=r"would both use .*/out/a/drums\.wav; put \{track\}"):
            plan_outputs(order, out, ["drums", "bass"], OutputOptions(), rename_duplicates=False)
    renamed = plan_outputs(songs, out, ["drums", "bass"], OutputOptions())  # the later song is renamed
    assert [p.track for p in renamed] == ["a", "drums.wav (2)"]
    assert renamed[1].paths["drums"] == out / "a" / "drums.wav (2)" / "drums.wav"
    assert [p.track for p in plan_outputs(songs[::-1], out, ["drums"], OutputOptions())] == [
        "drums.wav",
        "a (2)",
    ]
    # The clash in {folder}: no new {track} helps; both songs are named (before: 'cannot find a free name')
    deep = [SongSource(tmp_path / "a.wav"), SongSource(tmp_path / "a/drums.wav/y.wav", "a/drums.wav")]
    with pytest.raises(
        OutputError, match=r"a\.wav and .*/y\.wav would both use .*/out/a/drums\.wav; rename one"
    ):
        plan_outputs(deep, out, ["drums", "bass"], OutputOptions())


def test_batch_does_not_walk_its_own_output_or_hidden_files(tmp_path, stub_checkpoint):
    """Before: -o inside the input folder was separated again on every run, and the tree grew."""
    music = tmp_path / "music"
    (music / ".hidden").mkdir(parents=True)
    song(music / "a.wav")
    song(music / ".secret.wav")
    song(music / ".hidden" / "b.wav")
    out = music / "stems"
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    first = files_under(out, state=False)
    assert first == [f"a/{s}" for s in FOUR_STEMS]
    cli("batch", music, "-o", out, *m, check=0)
    assert files_under(out, state=False) == first


def test_batch_into_its_own_input_folder_says_so(tmp_path):
    """Before: `batch music -o music` said 'no audio files found in music' (the walk skipped -o)."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    result = cli("batch", music, "-o", music)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"--out: {music} is the input folder {music}: its stems would be taken for songs" in lines[0]
    assert os.listdir(music) == ["a.wav"]


def test_batch_into_a_folder_that_holds_its_input(tmp_path, stub_checkpoint):
    """Before: `batch music -o .` found no audio files (all of music lies inside -o, which was skipped)."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    cli("batch", "music", "-o", ".", "--model", stub_checkpoint, *FAST, cwd=tmp_path, check=0)
    assert files_under(tmp_path, state=False) == sorted([f"a/{s}" for s in FOUR_STEMS] + ["music/a.wav"])


def test_batch_survives_a_symlink_loop_and_separates_a_file_once(tmp_path, stub_checkpoint):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    song(music / "sub" / "a.wav")
    (music / "sub" / "loop").symlink_to(music)  # music/sub/loop/sub/loop/...
    (music / "same.wav").symlink_to(music / "sub" / "a.wav")  # the same file under another name
    result = cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(files_under(tmp_path / "out", state=False)) == 4  # one song


def test_the_same_file_named_twice_is_separated_once(tmp_path, stub_checkpoint):
    song(tmp_path / "a.wav")
    result = cli(
        tmp_path / "a.wav", tmp_path / "." / "a.wav", "-o", tmp_path / "out", "--model", stub_checkpoint,
        *FAST, "--json", check=0,
    )  # fmt: skip
    assert [json.loads(x)["event"] for x in result.stdout.splitlines()].count("result") == 1
    assert files_under(tmp_path / "out") == [f"a/{s}" for s in FOUR_STEMS]


@pytest.mark.slow  # two full batch processes; test_claims_race_each_song_once covers the claim
def test_two_batch_processes_share_the_work_each_song_exactly_once(tmp_path, tiny_checkpoint):
    music = tmp_path / "music"
    music.mkdir()
    for i in range(4):
        song(music / f"{i}.wav", seconds=1.0 + 0.1 * i)
    exe = shutil.which("stemsplit")
    args = [
        exe,
        "batch",
        str(music),
        "-o",
        str(tmp_path / "out"),
        "--model",
        tiny_checkpoint,
        *FAST,
        "--json",
    ]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    done = [
        json.loads(line)["source"]
        for stdout, _ in outputs
        for line in stdout.splitlines()
        if json.loads(line)["event"] == "result"
    ]
    assert sorted(os.path.basename(s) for s in done) == ["0.wav", "1.wav", "2.wav", "3.wav"]
    assert len(files_under(tmp_path / "out", state=False)) == 16


def test_a_dead_processs_claim_is_taken_over(tmp_path, stub_checkpoint):
    from stemsplit.batch import Claim
    from stemsplit.files import host_tag
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    [planned] = plan_outputs(
        [SongSource(music / "a.wav")], out, [s[:-4] for s in FOUR_STEMS], OutputOptions()
    )
    claim = Claim(out, planned)
    claim.path.parent.mkdir(parents=True)
    claim.path.write_text(json.dumps({"host": host_tag(), "pid": dead_pid(), "token": "x"}))
    cli("batch", music, "-o", out, "--model", stub_checkpoint, *FAST, check=0)
    assert files_under(out, state=False) == [f"a/{s}" for s in FOUR_STEMS]


def test_a_live_claim_is_respected(tmp_path, held_claims):
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], tmp_path / "out", ["x"], OutputOptions())
    first, second = Claim(tmp_path / "out", planned), Claim(tmp_path / "out", planned)
    held_claims += [first, second]
    assert first.acquire() and not second.acquire()
    assert str(os.getpid()) in second.holder
    first.release()
    assert second.acquire()


def test_templates_that_give_the_same_paths_share_the_claim(tmp_path):
    """Before: '{folder}/{track}/...' (a song with no folder) and '{track}/...' wrote the same files under
    two claims, so two runs could write them at once."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    out, claims = tmp_path / "out", []
    for template in ("{folder}/{track}/{stem}.{ext}", "{track}/{stem}.{ext}"):
        options = OutputOptions(filename=template)
        [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], out, ["x"], options)
        claims.append((planned, Claim(out, planned, template)))
    assert claims[0][0].paths == claims[1][0].paths
    assert claims[0][1].acquire() and not claims[1][1].acquire()
    claims[0][1].release()


def test_a_batch_with_other_settings_does_not_mix_its_stems_into_a_running_one(
    tmp_path, stub_checkpoint, held_claims
):
    """Before: a wav run skipped a song that a flac run held ('being separated'), exit 0; and a run with
    other --stems claimed another slot and wrote the same vocals file beside the other run."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    cli("batch", music, "-o", out, "--format", "flac", "--model", stub_checkpoint, *FAST, check=0)
    [record] = (out / ".stemsplit" / "done").glob("*.json")
    flac_settings = json.loads(record.read_text())["settings"]
    song(music / "a.wav", scale=0.1)  # changed: the flac run below separates it again
    [planned] = plan_outputs([SongSource(music / "a.wav")], out, ["vocals"], OutputOptions(fmt="flac"))
    running = Claim(out, planned, settings={**flac_settings, "stems": ["vocals"]})  # this process holds it
    held_claims.append(running)
    assert running.acquire()
    before = files_under(out, state=False)
    for extra in ([], ["--stems", "vocals"]):
        result = cli("batch", music, "-o", out, *extra, "--model", stub_checkpoint, *FAST)
        errors = [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert f"a.wav: being separated by process {os.getpid()}" in errors[0]
        assert "with other settings (format" in errors[0] and "run again when it is done" in errors[0]
        assert files_under(out, state=False) == before  # no wav stem beside the flac run's


def test_claims_share_a_slot_across_stems_and_formats_and_say_what_differs(tmp_path, held_claims):
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    def planned(stems, fmt):
        return plan_outputs(
            [SongSource(tmp_path / "a.wav")], tmp_path / "out", stems, OutputOptions(fmt=fmt)
        )[0]

    held = Claim(
        tmp_path / "out", planned(["x", "y"], "wav"), settings={"format": "wav", "stems": ["x", "y"]}
    )
    assert held.acquire()
    same = Claim(
        tmp_path / "out", planned(["x", "y"], "wav"), settings={"format": "wav", "stems": ["x", "y"]}
    )
    assert not same.acquire() and same.conflict == []  # the same run's work: skipped, as before
    other = Claim(tmp_path / "out", planned(["x"], "flac"), settings={"format": "flac", "stems": ["x"]})
    assert not other.acquire() and other.conflict == ["format", "stems"]
    elsewhere = Claim(tmp_path / "out", planned(["x"], "flac"), "{track}-{stem}.{ext}", {"format": "flac"})
    held_claims += [held, same, other, elsewhere]
    assert elsewhere.acquire()  # another template: another place, no conflict


def test_claims_race_each_song_once(tmp_path):
    """Eight threads race for one claim, many rounds: exactly one wins each time."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], tmp_path / "out", ["x"], OutputOptions())
    for _ in range(20):
        claims = [Claim(tmp_path / "out", planned) for _ in range(8)]
        won: list[bool] = []
        barrier = threading.Barrier(8)

        def race(claim, won=won, barrier=barrier):
            barrier.wait()
            won.append(claim.acquire())

        threads = [threading.Thread(target=race, args=(c,)) for c in claims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won.count(True) == 1
        next(c for c in claims if c.path.exists() and c._read()["token"] == c.token).release()

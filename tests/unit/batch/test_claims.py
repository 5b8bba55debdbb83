"""batch's claims (``stemsplit.batch.claims``): a held claim stays fresh by its heartbeat, junk where a
claim goes never blocks a run, and a claim known dead is taken over at once."""

import json
import os

from helpers import leave_claim


def test_a_held_claim_is_touched_by_its_heartbeat_whatever_the_windows_do(tmp_path, monkeypatch):
    """Without a window finishing (a slow model: minutes per window), a held claim stays fresh; released,
    its heartbeat stops."""
    import time

    from stemsplit.batch import claims

    monkeypatch.setattr(claims, "HEARTBEAT_SECONDS", 0.05)
    claim = leave_claim(tmp_path / "out", tmp_path, "a.wav")
    claim.path.unlink()
    assert claim.acquire()
    os.utime(claim.path, (0, 0))
    time.sleep(0.5)
    assert os.stat(claim.path).st_mtime > 0
    claim.release()
    assert not claim.path.exists()


def test_a_fifo_where_a_claim_goes_does_not_hang_the_run(tmp_path):
    """The stale check opens the claim (NFS revalidates on open): a FIFO there must not block it; it is
    junk, taken over once older than a heartbeat."""
    claim = leave_claim(tmp_path / "out", tmp_path, "a.wav")
    claim.path.unlink()
    os.mkfifo(claim.path)
    assert not claim.acquire() and claim.holder == "another process"
    os.utime(claim.path, (1, 1))  # as if left long ago
    assert claim.acquire()
    claim.release()


def test_a_claim_known_dead_is_taken_over_at_once_whatever_its_host(tmp_path, held_claims):
    """batch --ray retries a song whose worker died on another worker, perhaps on another host, at
    once: the scheduler names the dead attempt's token, and only a claim with that token is taken."""
    from stemsplit.batch import Claim
    from stemsplit.output.plan import SongOutputs, SongSource, track_name

    path = tmp_path / "a.wav"
    song_outputs = SongOutputs(SongSource(path), track_name(path), tmp_path / "stems")
    dead = Claim(tmp_path / "stems", song_outputs, token="attempt1")
    held_claims.append(dead)  # (its thread: the file becomes another host's below)
    assert dead.acquire() and dead.token == "attempt1"
    data = json.loads(dead.path.read_text())  # a fresh claim of another host's live-looking process
    where = {"space": "node9 (boot 1)", "host": "elsewhere", "hostname": "node9", "pid": 4242}
    dead.path.write_text(json.dumps({**data, **where}))

    retry = Claim(tmp_path / "stems", song_outputs, token="attempt2")
    held_claims.append(retry)
    assert not retry.acquire() and retry.holder == "process 4242 on node9"
    assert not retry.acquire(dead=["another attempt"])
    assert retry.acquire(dead=["attempt1"])
    assert json.loads(retry.path.read_text())["token"] == "attempt2"

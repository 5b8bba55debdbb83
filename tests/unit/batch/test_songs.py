"""Which songs a batch run finds and which of them a shard (``--shard I/N``) takes
(``stemsplit.batch.songs``)."""

from stemsplit.batch import find_songs, parse_shard, shard_of, song_path_key


def test_shards_take_every_song_once_and_adding_songs_moves_no_other(tmp_path):
    music = tmp_path / "music"
    for k in range(60):  # find_songs looks at names only: empty files will do
        (music / f"folder {k % 5}").mkdir(parents=True, exist_ok=True)
        (music / f"folder {k % 5}" / f"song {k}.flac").touch()
    songs = find_songs([music], tmp_path / "out").songs
    before = {song_path_key(s): shard_of(s, 4) for s in songs}
    shares = [parse_shard(f"{i}/4").take(songs) for i in range(1, 5)]
    assert sorted(song_path_key(s) for share in shares for s in share) == sorted(before)  # each once
    assert all(8 <= len(share) <= 22 for share in shares), [len(s) for s in shares]  # 15 each, roughly

    for k in range(60, 90):  # new songs, in new folders and in the old ones
        (music / f"new {k % 3}").mkdir(exist_ok=True)
        (music / f"new {k % 3}" / f"song {k}.wav").touch()
        (music / f"folder {k % 5}" / f"song {k}.wav").touch()
    # another spelling of the same folder (a link, as another host might mount it) changes nothing
    (tmp_path / "link").symlink_to(music)
    after = {
        song_path_key(s): shard_of(s, 4) for s in find_songs([tmp_path / "link"], tmp_path / "out").songs
    }
    assert len(after) == 120 and {key: after[key] for key in before} == before

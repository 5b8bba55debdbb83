"""The engine: a song's windows through a model, overlap-added and streamed, as one checked request asks.

- :mod:`.settings`: the engine's settings and their checks; :mod:`.request`: the pre-flight, flags or
  Python arguments as one checked request (both without torch: a bad setting is refused in well under
  a second);
- :mod:`.separator`: :class:`~.separator.Separator`, a model and its settings, songs in, stems out
  (:mod:`.song_separator`: what it shares with an ensemble);
- :mod:`.overlap_add` (windows, streaming, shifts), :mod:`.pool` (several songs' windows in one
  call), :mod:`.residual` (``exact``);
- :mod:`.ensemble` and :mod:`.ensemble_spec`: several models averaged stem by stem.

Nothing is imported here, so that the torch-free modules stay torch-free.
"""

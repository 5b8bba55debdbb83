"""The datasets stemsplit reads and makes: MUSDB18-HQ and Libri2Mix layouts, and the music and speech
synthesisers that write them (``stemsplit synth``, ``stemsplit synth-speech``)."""

"""stemsplit: split a song into drums, bass, other and vocals with TS-BSMamba2."""

__version__ = "0.1.0"

"""Scoring separations as the papers report them (``stemsplit eval`` and validation during training)."""

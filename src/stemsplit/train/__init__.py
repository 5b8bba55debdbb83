"""Training and evaluation of TS-BSMamba2 (``stemsplit train``, ``stemsplit eval``)."""

"""Building blocks several networks share, as mamba_ssm keeps its layers in ``modules/``.

``stft`` (the one spectrogram every family uses), ``bands`` (band split and merge, run band-group
by band-group), ``mamba2`` (the Mamba-2 layer and the backend choice: portable or mamba_ssm's CUDA
kernels) and ``mamba1`` (the Mamba-1 layer, on the same backend choice). They run on the scans of
:mod:`stemsplit.model.ops`. Network bodies stay in ``model/``, the ones other networks build on
(the RoFormer core) or that one network is made of (HTDemucs's transformer) included.
"""

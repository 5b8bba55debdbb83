"""The scans and kernels the layers run on, as mamba_ssm keeps them in its ``ops/``.

Each fast path sits beside its short pure-PyTorch reference, so a test can hold one against the
other: ``ssd`` (the chunked Mamba-2 scan and ``ssd_scan_naive``), ``selective_scan`` (the chunked
Mamba-1 scan and ``selective_scan_ref``), ``onednn`` (oneDNN's fused CPU products, each with its
plain PyTorch fallback). Tensors in, tensors out: no module, no parameter, nothing of the networks.
"""

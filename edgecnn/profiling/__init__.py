"""Profiling: latency (several models interleaved), statistics, environment capture, per-layer traces, reports, and
output parity between models (`parity`, the `edgecnn compare` command).

`edgecnn.profiling.latency.profile_models` is the entry point; these modules each do one job and import no PyTorch.
"""

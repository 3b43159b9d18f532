"""Latency profiling pieces: statistics, environment capture, per-layer traces, reports, output parity.

`edgecnn.profile` is the entry point (`profile_models`); these modules each do one job and import no PyTorch.
"""

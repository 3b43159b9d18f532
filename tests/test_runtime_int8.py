"""INT8 models must compute the same numbers on every CPU, through every edgecnn ONNX Runtime session.

On x86 CPUs without VNNI, ONNX Runtime's fast uint8 x int8 kernels sum pairs of products in int16 (VPMADDUBSW) and
saturate when weights use all 8 bits. The model below is built so that every pair saturates: inputs at 255 and
weights at 127. A session with edgecnn's options must still give the exact result (on CPUs with VNNI, or on ARM,
there is nothing to saturate and the test holds trivially)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_int8_qdq_onnx


def _exact(x: np.ndarray) -> np.ndarray:
    """The model in float64: 3x3 all-ones convolution (zero padding), output grid of 27/200, global mean."""
    xq = np.clip(np.round(x * 255), 0, 255) / 255
    p = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    y = sum(p[:, :, i : i + h, j : j + w].sum(axis=1) for i in range(3) for j in range(3))
    y = np.clip(np.round(y / (27 / 200)), 0, 255) * (27 / 200)
    return np.repeat(y.mean(axis=(1, 2))[:, None], 2, axis=1)


def test_int8_runner_does_not_saturate_on_any_x86_cpu(tmp_path):
    """Exact on this CPU whichever it is: without VNNI through the exact-kernel option, with VNNI (option off, where
    it only cost time) through VNNI's own int32 sums."""
    from edgecnn.platform import x86_with_vnni
    from edgecnn.runtime.onnxrt import EXACT_INT8, OnnxRuntimeRunner, session_options

    config = session_options().get_session_config_entry
    if x86_with_vnni():
        with pytest.raises(RuntimeError):  # ORT raises for an entry that was never set
            config(EXACT_INT8[0])
    else:
        assert config(EXACT_INT8[0]) == EXACT_INT8[1]
    path = build_int8_qdq_onnx(tmp_path / "sat.onnx")
    x = np.ones((2, 3, 8, 8), dtype=np.float32)
    x[1, :, ::2] = 0.5  # a second, different image: rows at 128 instead of 255
    with OnnxRuntimeRunner(path) as runner:
        got = runner.infer(x)
    np.testing.assert_allclose(got, _exact(x), atol=0.14)  # within one output step (27/200)


def test_x86_without_vnni_reads_the_cpu_flags(tmp_path):
    from edgecnn.platform import x86_with_vnni, x86_without_vnni

    (tmp_path / "proc").mkdir()
    info = tmp_path / "proc/cpuinfo"  # a fake machine root: edgecnn.platform reads ROOT/proc/cpuinfo
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx2 fma\n")
    assert x86_without_vnni(tmp_path, "x86_64")
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n")
    assert not x86_without_vnni(tmp_path, "x86_64")
    info.write_text("flags\t\t: fpu avx2 avx_vnni\n")
    assert not x86_without_vnni(tmp_path, "x86_64")
    assert not x86_without_vnni(tmp_path, "aarch64")  # ARM: no VPMADDUBSW, nothing to warn about
    assert not x86_without_vnni(tmp_path / "missing", "x86_64")  # cannot tell: no warning
    # the exact-INT8 option is left off only where VNNI is known to be there
    assert x86_with_vnni(tmp_path, "x86_64") and not x86_with_vnni(tmp_path, "aarch64")
    assert not x86_with_vnni(tmp_path / "missing", "x86_64")
    info.write_text("flags\t\t: fpu avx2 fma\n")
    assert not x86_with_vnni(tmp_path, "x86_64")

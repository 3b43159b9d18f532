"""The real TensorRT Python bindings of each checked release, importable on a machine without TensorRT or a GPU.

NVIDIA's `tensorrt*-bindings` wheels (about 1 MB each) hold the whole pybind11 API; their native module only needs a
handful of C symbols from libnvinfer / libnvonnxparser / libnvinfer_plugin (8.6: also libnvparsers). This module
downloads the wheels with pip (`pip download --no-deps --only-binary=:all:`), lists the symbols the module needs with
`nm -D --undefined-only`, and builds stub libraries that define them (factories returning NULL, so `trt.Builder(...)`
raises "factory function returned nullptr": everything below the factories is a test double, see
tests/trt_conformance_doubles.py). Everything lands in `.cache/trt-bindings/` (ignored) and is reused.

`prepare(version)` returns the environment (PYTHONPATH, LD_LIBRARY_PATH) that imports `tensorrt_bindings` of that
release, or raises `Unavailable` with the reason (no pip index, no C compiler, no nm).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "trt-bindings"

# release -> (pip requirement, soname major). 10.3: JetPack 6.1/6.2; 10.13: the desktop default; 11.4: the newest.
VERSIONS = {
    "8.6.1": ("tensorrt-bindings==8.6.1", 8),
    "10.3.0": ("tensorrt-cu12-bindings==10.3.0", 10),
    "10.13.0.35": ("tensorrt-cu12-bindings==10.13.0.35", 10),
    "11.4.0.106": ("tensorrt-cu13-bindings==11.4.0.106", 11),
}
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux_2_28_x86_64")  # 8.6/10.3 are 2_17 wheels, 10.13/11.4 are 2_28
LIBS = ("nvinfer", "nvonnxparser", "nvinfer_plugin", "nvparsers")


class Unavailable(Exception):
    """The bindings of a release cannot be prepared here (the reason is the message)."""


def _run(argv: list[str], what: str, timeout: int = 300) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what}: {exc}") from exc
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise Unavailable(f"{what} failed (exit {done.returncode}): {tail[0][:300]}")
    return done.stdout


def _wheel(version: str) -> Path:
    return fetch_wheel(VERSIONS[version][0], PLATFORMS)


def fetch_wheel(requirement: str, platforms: tuple[str, ...]) -> Path:
    """The wheel of `requirement` (name==version) for CPython 3.11 on one of `platforms`, downloaded once."""
    name, version = requirement.split("==")
    found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".download-") as tmp:
        argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        for platform in platforms:
            argv += ["--platform", platform]
        argv += ["--python-version", "3.11", "--implementation", "cp", "-d", tmp, requirement]
        _run(argv, f"pip download {requirement}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise Unavailable(f"pip download {requirement} wrote no wheel")
        target = CACHE / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _unpack(wheel: Path, version: str) -> Path:
    site = CACHE / f"site-{version}"
    if (site / "tensorrt_bindings" / "tensorrt.so").is_file():
        return site
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".unpack-"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp)
    if not (tmp / "tensorrt_bindings" / "tensorrt.so").is_file():
        shutil.rmtree(tmp)
        raise Unavailable(f"{wheel.name} has no tensorrt_bindings/tensorrt.so")
    shutil.rmtree(site, ignore_errors=True)
    os.replace(tmp, site)
    return site


def needed_symbols(module: Path) -> list[str]:
    """The undefined symbols of the native module that no system library provides (the TensorRT ones)."""
    if not shutil.which("nm"):
        raise Unavailable("nm (binutils) is not installed: it lists the symbols the stub libraries must define")
    out = _run(["nm", "-D", "--undefined-only", str(module)], f"nm -D {module.name}")
    names = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue  # weak symbols, and versioned ones (glibc, libstdc++, libgcc)
        name = parts[1]
        if name.startswith(("Py", "_Py", "dl")) or name in ("__gcc_personality_v0",):
            continue
        names.append(name)
    return names


def stub_source(symbols: list[str]) -> str:
    """C source defining every symbol as a function returning NULL (mangled C++ names through asm labels)."""
    lines = ["/* generated by tests/trt_conformance_bindings.py: TensorRT entry points returning NULL */"]
    for i, name in enumerate(symbols):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and not name.startswith("_Z"):
            lines.append(f"void *{name}(void) {{ return 0; }}")
        else:
            lines.append(f'void *stub_{i}(void) __asm__("{name}");')
            lines.append(f"void *stub_{i}(void) {{ return 0; }}")
    return "\n".join(lines) + "\n"


def _stubs(site: Path, version: str) -> Path:
    major = VERSIONS[version][1]
    libdir = CACHE / f"stubs-{version}"
    if all((libdir / f"lib{lib}.so.{major}").is_file() for lib in LIBS):
        return libdir
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise Unavailable("no C compiler (cc/gcc) to build the stub TensorRT libraries")
    symbols = needed_symbols(site / "tensorrt_bindings" / "tensorrt.so")
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".stubs-"))
    (tmp / "stub.c").write_text(stub_source(symbols))
    for lib in LIBS:
        soname = f"lib{lib}.so.{major}"
        _run(
            [compiler, "-shared", "-fPIC", "-o", str(tmp / soname), f"-Wl,-soname,{soname}", str(tmp / "stub.c")],
            f"{compiler} (stub {soname})",
        )
    shutil.rmtree(libdir, ignore_errors=True)
    os.replace(tmp, libdir)
    return libdir


def prepare(version: str) -> dict[str, str]:
    """Environment variables under which `import tensorrt_bindings` loads the real bindings of `version`."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        raise Unavailable("the bindings wheels used here are for x86-64 Linux")
    if sys.version_info[:2] != (3, 11):
        raise Unavailable(f"the bindings are fetched for CPython 3.11, this is {sys.version.split()[0]}")
    site = _unpack(_wheel(version), version)
    libdir = _stubs(site, version)
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "LD_LIBRARY_PATH": str(libdir)}

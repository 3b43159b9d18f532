"""The machine edgecnn runs on: Jetson or not, its Jetson Linux (L4T) / JetPack release, power mode, clocks, CPU flags.

One place for these facts, read by `doctor`, `build-engine`, `profile`, the TensorRT runner's hints and `deploy`.
Every reader takes `root` (default `ROOT`, the real "/"), so tests fake a Jetson with a folder holding
etc/nv_tegra_release, proc/device-tree/model, proc/cpuinfo and sys/... files. Everything is read defensively: a
missing or unreadable file gives None, never an error. Floor 0: imports nothing from edgecnn.

The JetPack table: which Jetson Linux release ships which JetPack, TensorRT and CUDA. TensorRT on a Jetson is a
JetPack system package, so the TensorRT version is the JetPack's, not something pip picks. Sources (checked Nov 2026):
NVIDIA JetPack release pages and the TensorRT support matrix.
"""

from __future__ import annotations

import platform as _std_platform
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/")


@dataclass(frozen=True)
class JetPackRelease:
    """One JetPack release and the versions it ships."""

    jetpack: str
    l4t: str
    tensorrt: str
    cuda: str


JETPACK_4_6 = (JetPackRelease("4.6.x", "32.7.x", "8.2.1", "10.2"),)
JETPACK_5 = (
    JetPackRelease("5.1.1", "35.3.1", "8.5.2", "11.4"),
    JetPackRelease("5.1.2", "35.4.1", "8.5.2", "11.4"),
    JetPackRelease("5.1.3", "35.5.0", "8.5.2", "11.4"),
    JetPackRelease("5.1.4", "35.6.0", "8.5.2", "11.4"),
)
JETPACK_6 = (
    JetPackRelease("6.0", "36.3.0", "8.6.2", "12.2"),
    JetPackRelease("6.1", "36.4.0", "10.3.0", "12.6"),
    JetPackRelease("6.2", "36.4.3", "10.3.0", "12.6"),
)
JETPACK_7 = (JetPackRelease("7.0", "38.2.0", "10.13.3", "13.0"),)
# The JetPack 6 developer preview: no board preset lists it (no production board support), but a Jetson may still
# run it and `deploy bundle --l4t 36.2.0` targets its l4t-jetpack image, so its versions are known here.
JETPACK_6_DP = (JetPackRelease("6.0 DP", "36.2.0", "8.6.2", "12.2"),)
_KNOWN_RELEASES = JETPACK_5 + JETPACK_6_DP + JETPACK_6 + JETPACK_7

# The Jetson Linux release `deploy bundle` targets unless --l4t says otherwise (its l4t-jetpack image runs on 36.4.x).
DEFAULT_L4T = "36.4.0"


def jetpack_for_l4t(l4t: str) -> JetPackRelease | None:
    """The JetPack release a Jetson Linux (L4T) version belongs to, e.g. '36.4.3' -> JetPack 6.2; an unknown patch
    release gets the newest known one of its major.minor."""
    releases = {r.l4t: r for r in _KNOWN_RELEASES}
    if l4t in releases:
        return releases[l4t]
    matches = _same_major_minor(l4t)
    return matches[-1] if matches else None


def jetpacks_for_l4t_series(l4t: str) -> str | None:
    """Every JetPack of `l4t`'s major.minor, e.g. '36.4.0' -> '6.1/6.2' (what an l4t-jetpack image of that series
    runs on); None when unknown."""
    matches = _same_major_minor(l4t)
    return "/".join(r.jetpack for r in matches) if matches else None


def _same_major_minor(l4t: str) -> list[JetPackRelease]:
    major_minor = ".".join(l4t.split(".")[:2])
    return [r for r in _KNOWN_RELEASES if r.l4t.startswith(major_minor + ".")]


# ---------------------------------------------------------------- reading the machine


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else ROOT


def read_text(path: str | Path) -> str | None:
    """A small system file's text (NULs removed, stripped), or None when it is missing or unreadable."""
    try:
        return Path(path).read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def nv_tegra_release_path(root: str | Path | None = None) -> Path:
    return _root(root) / "etc/nv_tegra_release"


def device_tree_model_path(root: str | Path | None = None) -> Path:
    return _root(root) / "proc/device-tree/model"


def parse_nv_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3'; None when it is not that format."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text or "")
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else None


def jetson_release(root: str | Path | None = None) -> str | None:
    """The Jetson Linux (L4T) release, e.g. '36.4.3', from /etc/nv_tegra_release; None off a Jetson."""
    return parse_nv_tegra_release(read_text(nv_tegra_release_path(root)) or "")


def nv_tegra_release_line(root: str | Path | None = None) -> str | None:
    """The first line of /etc/nv_tegra_release as it is (release, revision, GCID, board), for records."""
    text = read_text(nv_tegra_release_path(root))
    return text.splitlines()[0] if text else None


def jetson_model(root: str | Path | None = None) -> str | None:
    """The board's /proc/device-tree/model text (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'); None if absent."""
    return read_text(device_tree_model_path(root)) or None


def is_jetson(root: str | Path | None = None) -> bool:
    """A Jetson: its device-tree model names one, or Jetson Linux's release file is there."""
    model = jetson_model(root)
    return bool(model and "jetson" in model.lower()) or nv_tegra_release_path(root).is_file()


def parse_nvpmodel(text: str) -> str | None:
    """`nvpmodel -q` output -> the power mode, with its id when given: 'NV Power Mode: MAXN' + '0' -> 'MAXN (id 0)'
    (the id is what `nvpmodel -m` takes; names differ per board)."""
    m = re.search(r"NV Power Mode:[ \t]*(\S[^\n]*)", text or "")
    if not m:
        return None
    mode = m.group(1).strip()
    rest = (text or "")[m.end() :].strip().splitlines()
    if rest and rest[0].strip().isdigit():
        mode += f" (id {rest[0].strip()})"
    return mode


def clocks_locked(root: str | Path | None = None) -> bool | None:
    """Whether CPU and GPU clocks are pinned (min == max, as `jetson_clocks` leaves them), None if unreadable."""
    root = _root(root)
    cpu = root / "sys/devices/system/cpu/cpu0/cpufreq"
    pairs = [(cpu / "scaling_min_freq", cpu / "scaling_max_freq")]
    devfreqs = root / "sys/class/devfreq"
    for devfreq in sorted(devfreqs.glob("*")) if devfreqs.is_dir() else []:
        name = devfreq.name.lower()
        if "gpu" in name or "gv11b" in name or "ga10b" in name or "gp10b" in name or "17000000" in name:
            pairs.append((devfreq / "min_freq", devfreq / "max_freq"))
    seen = False
    for lo, hi in pairs:
        a, b = read_text(lo), read_text(hi)
        if a is None or b is None:
            continue
        seen = True
        if a != b:
            return False
    return True if seen else None


# ---------------------------------------------------------------- CPU

_X86 = ("x86_64", "amd64", "i686", "i386")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpuinfo_text(root: str | Path | None = None) -> str | None:
    return read_text(_root(root) / "proc/cpuinfo")


def cpu_model(root: str | Path | None = None) -> str | None:
    """The CPU's name from /proc/cpuinfo (x86 'model name', ARM 'Model' / 'Hardware' / 'cpu model'), else None."""
    text = cpuinfo_text(root) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return None


def cpu_governor(root: str | Path | None = None) -> str | None:
    """cpu0's frequency governor ('performance', 'schedutil', ...)."""
    return read_text(_root(root) / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def x86_cpu_flags(root: str | Path | None = None, machine: str | None = None) -> set[str] | None:
    """The CPU flags of an x86 machine (Linux /proc/cpuinfo); None where they cannot be read (other OS, ARM)."""
    if (machine or _std_platform.machine()).lower() not in _X86:
        return None
    text = cpuinfo_text(root)
    if text is None:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return set(flags) if flags is not None else None


def x86_without_vnni(root: str | Path | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU whose flags show neither AVX-512 VNNI nor AVX-VNNI: where full-range INT8 weights need ONNX
    Runtime's slower exact kernels. False where it cannot tell (other OS, ARM)."""
    flags = x86_cpu_flags(root, machine)
    return flags is not None and not _VNNI_FLAGS & flags


def x86_with_vnni(root: str | Path | None = None, machine: str | None = None) -> bool:
    """True only where the flags show VNNI: the one place ONNX Runtime's exact-INT8 option can be left off safely."""
    flags = x86_cpu_flags(root, machine)
    return flags is not None and bool(_VNNI_FLAGS & flags)

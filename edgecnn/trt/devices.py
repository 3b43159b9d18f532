"""Deployment targets for `build-engine --device`: what the build plan needs to know about each board.

Facts per preset: GPU compute capability, number of DLA cores, a workspace that leaves room for the camera and the
rest of the application on boards whose CPU and GPU share memory, and which JetPack releases the board runs (the
JetPack / L4T / TensorRT table itself is `edgecnn.platform`'s).

Sources (checked Nov 2026): NVIDIA JetPack release pages and the TensorRT support matrix / "Migrating TensorRT from
10.x to 11.x on Jetson/JetPack" page (TensorRT 11.4.1 supports JetPack 7.2.2+ on AGX Orin and Thor, DLA on AGX Orin
only; Thor has no DLA; TensorRT 11.0-11.4.0 do not support JetPack).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecnn.errors import UserInputError
from edgecnn.platform import JETPACK_4_6, JETPACK_5, JETPACK_6, JETPACK_7, JetPackRelease


@dataclass(frozen=True)
class DevicePreset:
    """A build target. `compute_capability` is None for `desktop` (read from the GPU at build time)."""

    name: str
    title: str
    arch: str
    compute_capability: str | None
    dla_cores: int
    workspace_mib: int | None  # None: let TensorRT use what the GPU has (its default)
    jetson: bool
    jetpack: tuple[JetPackRelease, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def default_tensorrt(self) -> str | None:
        """The TensorRT of the newest JetPack this board runs (None for desktop: whatever is installed)."""
        return self.jetpack[-1].tensorrt if self.jetpack else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "arch": self.arch,
            "compute_capability": self.compute_capability,
            "dla_cores": self.dla_cores,
            "workspace_mib": self.workspace_mib,
            "jetson": self.jetson,
            "jetpack": [r.__dict__ for r in self.jetpack],
            "notes": list(self.notes),
        }


DEVICES: dict[str, DevicePreset] = {
    d.name: d
    for d in (
        DevicePreset(
            "nano",
            "Jetson Nano (2019, Maxwell)",
            "maxwell",
            "5.3",
            0,
            256,
            True,
            JETPACK_4_6,
            notes=(
                "Its last JetPack (4.6.x) ships TensorRT 8.2, older than the 8.5 edgecnn supports: run the ONNX "
                "model with ONNX Runtime on the Nano's CPU instead (edgecnn predict model.onnx).",
            ),
        ),
        DevicePreset("xavier-nx", "Jetson Xavier NX", "volta", "7.2", 2, 1024, True, JETPACK_5),
        DevicePreset("agx-xavier", "Jetson AGX Xavier", "volta", "7.2", 2, 2048, True, JETPACK_5),
        DevicePreset("orin-nano", "Jetson Orin Nano", "ampere", "8.7", 0, 1024, True, JETPACK_5 + JETPACK_6),
        DevicePreset(
            "orin-nx",
            "Jetson Orin NX",
            "ampere",
            "8.7",
            2,
            2048,
            True,
            JETPACK_5 + JETPACK_6,
            notes=(
                "The 8 GB Orin NX module has one DLA core (the 16 GB module two): the build checks the real count.",
            ),
        ),
        DevicePreset(
            "agx-orin",
            "Jetson AGX Orin",
            "ampere",
            "8.7",
            2,
            4096,
            True,
            JETPACK_5 + JETPACK_6,
            notes=("TensorRT 11.4.1+ supports AGX Orin on JetPack 7.2.2 or later, DLA included.",),
        ),
        DevicePreset(
            "thor",
            "Jetson AGX Thor",
            "blackwell",
            "11.0",
            0,
            8192,
            True,
            JETPACK_7,
            notes=("Thor has no DLA. CUDA 13 numbers its GPU sm_110 (CUDA 12.8/12.9 called it sm_101).",),
        ),
        DevicePreset("desktop", "Desktop / server NVIDIA GPU", "any", None, 0, None, False),
    )
}


def get_device(name: str) -> DevicePreset:
    key = (name or "").strip().lower()
    if key not in DEVICES:
        raise UserInputError(f"Unknown --device {name!r}; choose one of: {', '.join(DEVICES)}")
    return DEVICES[key]


# /proc/device-tree/model strings -> preset (the first matching fragment wins; order matters: "Orin Nano" before "Orin")
_MODEL_FRAGMENTS = (
    ("thor", "thor"),
    ("orin nano", "orin-nano"),
    ("orin nx", "orin-nx"),
    ("agx orin", "agx-orin"),
    ("orin", "agx-orin"),
    ("xavier nx", "xavier-nx"),
    ("agx xavier", "agx-xavier"),
    ("xavier", "agx-xavier"),
    ("nano", "nano"),
)


def preset_for_model_string(model: str) -> str | None:
    """The preset for a Jetson's /proc/device-tree/model text (e.g. 'NVIDIA Jetson AGX Orin Developer Kit')."""
    text = model.lower()
    for fragment, preset in _MODEL_FRAGMENTS:
        if fragment in text:
            return preset
    return None

"""Pick the GPU variant (cpu, cuXXX, rocmX.Y, xpu) the way uv's `--torch-backend=auto` does.

The signals, their order and the tables follow uv's `uv-torch` crate (accelerator.rs and
backend.rs), so that warmd warms the wheels the user's uv would choose on this machine.
uv prefers the newest backend a driver supports and falls back to cpu; so does warmd.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

Runner = Callable[[list[str]], "str | None"]

# Newest first; each CUDA build with the oldest Linux driver that runs it. uv takes CUDA's
# minor-version compatibility at face value: every 12.x build needs only the 12.0 driver.
_CUDA_MIN_DRIVER: tuple[tuple[str, str], ...] = (
    ("cu132", "580"),
    ("cu130", "580"),
    ("cu129", "525.60.13"),
    ("cu128", "525.60.13"),
    ("cu126", "525.60.13"),
    ("cu125", "525.60.13"),
    ("cu124", "525.60.13"),
    ("cu123", "525.60.13"),
    ("cu122", "525.60.13"),
    ("cu121", "525.60.13"),
    ("cu120", "525.60.13"),
    ("cu118", "450.80.02"),
    ("cu117", "450.80.02"),
    ("cu116", "450.80.02"),
    ("cu115", "450.80.02"),
    ("cu114", "450.80.02"),
    ("cu113", "450.80.02"),
    ("cu112", "450.80.02"),
    ("cu111", "450.80.02"),
    ("cu110", "450.36.06"),
    ("cu102", "440.33"),
    ("cu101", "418.39"),
    ("cu100", "410.48"),
    ("cu92", "396.26"),
    ("cu91", "390.46"),
    ("cu90", "384.81"),
    ("cu80", "375.26"),
)

# Every ROCm build uv names, newest first.
_ROCM_BUILDS: tuple[str, ...] = (
    "rocm7.2", "rocm7.1", "rocm7.0", "rocm6.4", "rocm6.3", "rocm6.2.4", "rocm6.2", "rocm6.1",
    "rocm6.0", "rocm5.7", "rocm5.6", "rocm5.5", "rocm5.4.2", "rocm5.4", "rocm5.3", "rocm5.2",
    "rocm5.1.1", "rocm4.2", "rocm4.1", "rocm4.0.1",
)

# The GPU architectures uv recognises, in uv's order (it picks the first of several GPUs
# by this order), and the ROCm builds whose torch was compiled for each, newest first.
_GFX_ALL = ("gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100", "gfx1101",
            "gfx1102", "gfx1200", "gfx1201")
_ROCM_ARCHES: dict[str, frozenset[str]] = {
    "rocm7.2": frozenset(_GFX_ALL + ("gfx950", "gfx1150", "gfx1151")),
    "rocm7.1": frozenset(_GFX_ALL + ("gfx950",)),
    "rocm7.0": frozenset(_GFX_ALL + ("gfx950",)),
    "rocm6.4": frozenset(_GFX_ALL),
    "rocm6.3": frozenset(_GFX_ALL),
    "rocm6.2.4": frozenset(_GFX_ALL),
    "rocm6.2": frozenset(("gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100")),
    "rocm6.1": frozenset(("gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100",
                          "gfx1101")),
    "rocm6.0": frozenset(("gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100")),
}
AMD_ARCHITECTURES: tuple[str, ...] = (
    "gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100", "gfx1101",
    "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201",
)

KNOWN_VARIANTS: tuple[str, ...] = (
    ("cpu",) + tuple(name for name, _ in _CUDA_MIN_DRIVER) + _ROCM_BUILDS + ("xpu",)
)

_PCI_CLASS_DISPLAY = 0x03
_PCI_VENDOR_INTEL = 0x8086


@dataclass(frozen=True)
class Detection:
    """The variant chosen, which signal decided it, and a sentence saying why."""

    variant: str
    source: str  # "UV_CUDA_DRIVER_VERSION", "/sys/module/nvidia/version", "nvidia-smi", "config", "none", ...
    detail: str
    # Every variant uv would accept here, best first, ending in "cpu": a lock that lacks the
    # best one may still hold the next.
    candidates: tuple[str, ...] = field(default=())


def run_command(argv: list[str]) -> str | None:
    """Run `argv` and return its stdout, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def cuda_variants(driver: str) -> tuple[str, ...]:
    """The CUDA builds a Linux driver version can run, newest first, then cpu."""
    have = Version(driver)
    return tuple(name for name, least in _CUDA_MIN_DRIVER if have >= Version(least)) + ("cpu",)


def rocm_variants(arch: str) -> tuple[str, ...]:
    """The ROCm builds compiled for a GPU architecture, newest first, then cpu."""
    return tuple(b for b, arches in _ROCM_ARCHES.items() if arch in arches) + ("cpu",)


def detect_variant(
    env: Mapping[str, str] = os.environ,
    *,
    root: Path = Path("/"),
    run: Runner = run_command,
) -> Detection:
    """Detect the GPU variant from the same signals, in the same order, as uv's auto mode."""
    if (raw := env.get("UV_CUDA_DRIVER_VERSION")) is not None:
        return _from_driver(raw, "UV_CUDA_DRIVER_VERSION")
    if (raw := env.get("UV_AMD_GPU_ARCHITECTURE")) is not None:
        return _from_arch(raw.strip(), "UV_AMD_GPU_ARCHITECTURE")

    sys_version = _read(root / "sys/module/nvidia/version")
    if sys_version is not None:
        return _from_driver(sys_version.strip(), "/sys/module/nvidia/version")

    proc_version = _read(root / "proc/driver/nvidia/version")
    if proc_version is not None:
        # "NVRM version: NVIDIA UNIX ... Kernel Module  550.144.03  Release Build ...": the
        # version is the second field when the line is split on double spaces.
        fields = proc_version.split("  ")
        if len(fields) > 1:
            return _from_driver(fields[1].strip(), "/proc/driver/nvidia/version")

    out = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if out is not None and (lines := out.splitlines()):
        return _from_driver(lines[0].strip(), "nvidia-smi")

    out = run(["rocm_agent_enumerator"])
    if out is not None:
        # The list starts with gfx000 (the CPU agent); uv keeps the names it knows and takes
        # the lowest in its own order.
        found = {line.strip() for line in out.splitlines()} & set(AMD_ARCHITECTURES)
        if found:
            arch = min(found, key=AMD_ARCHITECTURES.index)
            return _from_arch(arch, "rocm_agent_enumerator")

    if (device := _intel_gpu(root / "sys/bus/pci/devices")) is not None:
        return Detection("xpu", "/sys/bus/pci/devices", f"Intel display device {device} found",
                         ("xpu",))

    return Detection("cpu", "none", "no NVIDIA driver, AMD GPU or Intel GPU found; using cpu",
                     ("cpu",))


def resolve_variant(
    configured: str,
    env: Mapping[str, str] = os.environ,
    *,
    root: Path = Path("/"),
    run: Runner = run_command,
) -> Detection:
    """Use the configured variant, or detect one when it is "auto"."""
    if configured == "auto":
        return detect_variant(env, root=root, run=run)
    return Detection(configured, "config", f'variant = "{configured}" in the config',
                     (configured,) if configured == "cpu" else (configured, "cpu"))


def _from_driver(raw: str, source: str) -> Detection:
    try:
        candidates = cuda_variants(raw)
    except InvalidVersion:
        # uv stops with an error here; warmd carries on with cpu and says why.
        return Detection("cpu", source, f"{raw!r} is not a driver version (uv refuses it too); using cpu",
                         ("cpu",))
    best = candidates[0]
    if best == "cpu":
        oldest = _CUDA_MIN_DRIVER[-1][1]
        return Detection("cpu", source,
                         f"driver {raw} is older than {oldest}, the oldest any CUDA build supports; "
                         "using cpu", candidates)
    newest_driver = _CUDA_MIN_DRIVER[0][1]
    cuda = _cuda_dotted(best)
    detail = f"driver {raw} supports CUDA {cuda}"
    if Version(cuda) < Version("12"):
        detail += f" but no CUDA 12 build (those need driver {_min_driver('cu120')} or newer)"
    elif Version(cuda) < Version("13"):
        detail += f" (CUDA 13 builds need driver {newest_driver} or newer)"
    return Detection(best, source, detail, candidates)


def _from_arch(arch: str, source: str) -> Detection:
    if arch not in AMD_ARCHITECTURES:
        return Detection("cpu", source, f"AMD GPU architecture {arch!r} is unknown to uv; using cpu",
                         ("cpu",))
    candidates = rocm_variants(arch)
    return Detection(candidates[0], source,
                     f"AMD {arch} is built for by ROCm {candidates[0].removeprefix('rocm')}",
                     candidates)


def _min_driver(variant: str) -> str:
    return dict(_CUDA_MIN_DRIVER)[variant]


def _cuda_dotted(variant: str) -> str:
    digits = variant.removeprefix("cu")
    return f"{digits[:-1]}.{digits[-1]}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _intel_gpu(devices: Path) -> str | None:
    """The first PCI device that is a display controller made by Intel, as uv looks for it."""
    try:
        entries = sorted(devices.iterdir())
    except OSError:
        return None
    for dev in entries:
        try:
            pci_class = int((dev / "class").read_text().strip(), 16)
            vendor = int((dev / "vendor").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if (pci_class >> 16) & 0xFF == _PCI_CLASS_DISPLAY and vendor == _PCI_VENDOR_INTEL:
            return dev.name
    return None

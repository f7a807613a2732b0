"""Which GPU build a set of installed packages is, whatever the stack: PyTorch, JAX, CuPy, ONNX Runtime,
TensorFlow, Intel's XPU runtime, ROCm's triton, or CUDA's own wheels.

A project's extras and groups are told apart by what they install; the most telling evidence first:
torch's local label or index (exact), CUDA's runtime wheel version (the CUDA minor), then names that
only say the CUDA major, ROCm or XPU, and last a framework with no GPU wheel beside it (cpu).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from packaging.version import InvalidVersion, Version

from ..uv import LockedPackage

# A local version label (or the last part of an index URL) that names a GPU build.
_BUILD_LABEL = re.compile(r"^(cpu|xpu|cu\d{2,3}|rocm\d+(?:\.\d+){1,2})(?=$|\.)")
# The packages whose build says which variant a choice of extras brings, most telling first.
_TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# CUDA's runtime wheel: its version is the CUDA release (-cu12 suffixed up to CUDA 12, unsuffixed from 13).
_CUDA_RUNTIMES = ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu11")
# Names that say only the CUDA major: `jax[cuda13]`'s plugin and PJRT, CuPy's wheel, CUDA's -cuNN wheels.
_CUDA_MAJOR = (
    re.compile(r"^jax-cuda(?P<major>\d+)-(?:plugin|pjrt)$"),
    re.compile(r"^cupy-cuda(?P<major>\d+)x$"),
    re.compile(r"^nvidia-.+-cu(?P<major>\d+)$"),
)
_SUFFIXED = re.compile(r"-cu\d+$")
_CUPY_EXACT = re.compile(r"^cupy-cuda(?P<release>\d{3})$")  # cupy-cuda117: one CUDA release
_ROCM = re.compile(r"^(?:triton-rocm|pytorch-triton-rocm|cupy-rocm-.+|jax-rocm\d*-(?:plugin|pjrt))$")
# Intel's XPU runtime from PyPI (mkl and intel-openmp serve CPU builds too, so they say nothing).
_XPU = re.compile(r"^(?:intel-sycl-rt|intel-opencl-rt|intel-pti|oneccl.*|pytorch-triton-xpu|intel-cmplr-lib-ur)$")
# The frameworks whose presence without any GPU wheel means a CPU build.
_FRAMEWORKS = (*_TORCH_FAMILY, "jaxlib", "jax", "tensorflow", "tensorflow-cpu", "onnxruntime")
_MAJOR_ONLY = ("cu11x", "cu12x", "cu13x", "rocm")


@dataclass(frozen=True)
class Build:
    """The GPU build a set of installed packages is, and what shows it."""

    variant: str  # "cu128", "rocm6.3", "xpu", "cpu"; "cu12x"/"cu13x" or "rocm" when only that much is known
    exact: bool  # named by a local version label or an index URL, rather than inferred
    evidence: str  # "torch 2.9.1+cu128"


def build_of(packages: Sequence[LockedPackage]) -> Build | None:
    """Which build these packages are, from every GPU stack among them; None when no stack is there."""
    by_name = {p.name: p for p in packages}
    torch = next((by_name[n] for n in _TORCH_FAMILY if n in by_name), None)
    if torch is not None and (build := _torch_build(torch)) is not None:
        return build
    with_ = f"{torch.name} {torch.version} with " if torch is not None else ""
    for runtime in _CUDA_RUNTIMES:
        if runtime in by_name and _valid(by_name[runtime].version):
            v = Version(by_name[runtime].version)
            return Build(f"cu{v.major}{v.minor}", False, f"{with_}{runtime} {by_name[runtime].version}")
    for name, pkg in sorted(by_name.items()):
        if m := _CUPY_EXACT.match(name):
            return Build(f"cu{m.group('release')}", False, f"{with_}{name} {pkg.version}")
    majors: dict[int, str] = {}
    for name, pkg in sorted(by_name.items()):
        for pattern in _CUDA_MAJOR:
            if m := pattern.match(name):
                majors.setdefault(int(m.group("major")), f"{name} {pkg.version}")
        if name.startswith(("nvidia-", "cuda-")) and not _SUFFIXED.search(name) and _valid(pkg.version) \
                and Version(pkg.version).major >= 13:
            majors.setdefault(13, f"{name} {pkg.version} (CUDA 13's unsuffixed names)")
    if majors:
        major = max(majors)
        return Build(f"cu{major}x", False, f"{with_}{majors[major]}")
    for pattern, variant in ((_ROCM, "rocm"), (_XPU, "xpu")):
        hit = next((f"{n} {p.version}" for n, p in sorted(by_name.items()) if pattern.match(n)), None)
        if hit:
            return Build(variant, False, f"{with_}{hit}")
    if "onnxruntime-gpu" in by_name:  # from PyPI: CUDA 12 since 1.19, CUDA 11 before
        ort = by_name["onnxruntime-gpu"]
        cuda = 12 if _valid(ort.version) and Version(ort.version) >= Version("1.19") else 11
        return Build(f"cu{cuda}x", False, f"{with_}onnxruntime-gpu {ort.version}")
    framework = next((by_name[n] for n in _FRAMEWORKS if n in by_name), None)
    if framework is not None:
        return Build("cpu", False, f"{framework.name} {framework.version} without GPU packages")
    return None


def _torch_build(torch: LockedPackage) -> Build | None:
    what = f"{torch.name} {torch.version}"
    label = _build_label(Version(torch.version).local or "") if _valid(torch.version) else None
    if label:
        return Build(label, True, what)
    where = torch.registry or torch.url or ""
    last = urlsplit(where).path.rstrip("/").rsplit("/", 1)[-1]
    if _BUILD_LABEL.fullmatch(last):
        return Build(last, True, f"{what} from {where}")
    return None


def _valid(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def _build_label(local: str) -> str | None:
    m = _BUILD_LABEL.match(local)
    return m.group(1) if m else None


def build_score(build: Build | None, variant: str) -> int:
    """How well a build is that variant: 3 named exactly, 2 inferred, 1 same CUDA major (or ROCm), 0 not it."""
    if build is None:
        return 0
    if build.variant == variant:
        return 3 if build.exact else 2
    if build.variant in _MAJOR_ONLY and variant.startswith(build.variant.rstrip("x")):
        return 1
    return 0

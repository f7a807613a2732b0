"""Variant detection from fixture outputs of nvidia-smi / rocm_agent_enumerator and env vars."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fakes import FakeTools, fake_root
from warmd.plan import KNOWN_VARIANTS, Detection, detect_variant, resolve_variant

FIXTURES = Path(__file__).parents[1] / "fixtures" / "gpu"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_nothing_found_is_cpu(tmp_path: Path) -> None:
    tools = FakeTools()
    d = detect_variant({}, root=tmp_path, run=tools)
    assert d == Detection("cpu", "none", d.detail, ("cpu",))
    assert "no NVIDIA" in d.detail
    # Both probes were tried, in uv's order.
    assert [c[0] for c in tools.calls] == ["nvidia-smi", "rocm_agent_enumerator"]
    assert tools.calls[0] == ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]


def test_nvidia_smi_570_supports_cuda_12_9(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path, run=FakeTools(nvidia_smi=fixture("nvidia-smi-570.txt")))
    # uv counts on CUDA minor-version compatibility: any 12.x build runs on a >=525.60.13 driver.
    assert (d.variant, d.source) == ("cu129", "nvidia-smi")
    assert "570.86.15" in d.detail and "CUDA 12.9" in d.detail
    assert d.candidates[:3] == ("cu129", "cu128", "cu126") and d.candidates[-1] == "cpu"
    assert "cu130" not in d.candidates


def test_env_driver_version_12_8_range(tmp_path: Path) -> None:
    d = detect_variant({"UV_CUDA_DRIVER_VERSION": "550.54.15"}, root=tmp_path, run=FakeTools())
    assert (d.variant, d.source) == ("cu129", "UV_CUDA_DRIVER_VERSION")
    assert "cu128" in d.candidates and "cu124" in d.candidates


def test_driver_580_reaches_cuda_13(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"sys/module/nvidia/version": fixture("sys-module-nvidia-version-580.txt")})
    tools = FakeTools(nvidia_smi="1.0\n")
    d = detect_variant({}, root=root, run=tools)
    assert (d.variant, d.source) == ("cu132", "/sys/module/nvidia/version")
    assert tools.calls == []  # the file answered; no command was run


def test_proc_driver_version_550(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"proc/driver/nvidia/version": fixture("proc-driver-nvidia-version-550.txt")})
    d = detect_variant({}, root=root, run=FakeTools())
    assert (d.variant, d.source) == ("cu129", "/proc/driver/nvidia/version")
    assert "550.144.03" in d.detail


def test_first_gpu_line_of_nvidia_smi(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path, run=FakeTools(nvidia_smi=fixture("nvidia-smi-550-two-gpus.txt")))
    assert d.variant == "cu129" and "550.144.03" in d.detail


def test_driver_too_old_for_cuda_12(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path, run=FakeTools(nvidia_smi=fixture("nvidia-smi-470.txt")))
    assert d.variant == "cu118"
    assert "no CUDA 12 build" in d.detail and "525.60.13" in d.detail
    assert not any(c.startswith("cu12") for c in d.candidates)


def test_driver_too_old_for_any_cuda_build_is_cpu(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path, run=FakeTools(nvidia_smi=fixture("nvidia-smi-367.txt")))
    assert (d.variant, d.source, d.candidates) == ("cpu", "nvidia-smi", ("cpu",))
    assert "367.57 is older than 375.26" in d.detail


def test_bad_driver_string_is_cpu_with_reason(tmp_path: Path) -> None:
    d = detect_variant({"UV_CUDA_DRIVER_VERSION": "not-a-version"}, root=tmp_path, run=FakeTools())
    assert d.variant == "cpu" and "not a driver version" in d.detail


def test_rocm_gfx942(tmp_path: Path) -> None:
    tools = FakeTools(rocm_agent_enumerator=fixture("rocm_agent_enumerator-mi300.txt"))
    d = detect_variant({}, root=tmp_path, run=tools)
    assert (d.variant, d.source) == ("rocm7.2", "rocm_agent_enumerator")
    assert "gfx942" in d.detail
    # Every ROCm build PyTorch made for MI300 is a candidate; rocm5.x ones were not built for it.
    assert d.candidates == ("rocm7.2", "rocm7.1", "rocm7.0", "rocm6.4", "rocm6.3", "rocm6.2.4",
                            "rocm6.2", "rocm6.1", "rocm6.0", "cpu")


def test_rocm_gfx1151_only_in_newest_build(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path,
                       run=FakeTools(rocm_agent_enumerator=fixture("rocm_agent_enumerator-strix-halo.txt")))
    assert d.candidates == ("rocm7.2", "cpu")


def test_rocm_several_gpus_takes_uvs_lowest(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path,
                       run=FakeTools(rocm_agent_enumerator=fixture("rocm_agent_enumerator-mixed.txt")))
    assert "gfx90a" in d.detail


def test_rocm_unknown_arch_falls_through_to_cpu(tmp_path: Path) -> None:
    d = detect_variant({}, root=tmp_path,
                       run=FakeTools(rocm_agent_enumerator=fixture("rocm_agent_enumerator-unknown.txt")))
    assert (d.variant, d.source) == ("cpu", "none")


def test_env_overrides_come_first(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"sys/module/nvidia/version": "580.65.06\n"})
    tools = FakeTools(nvidia_smi="580.65.06\n", rocm_agent_enumerator="gfx000\ngfx942\n")
    d = detect_variant({"UV_CUDA_DRIVER_VERSION": "470.256.02", "UV_AMD_GPU_ARCHITECTURE": "gfx942"},
                       root=root, run=tools)
    assert (d.variant, d.source) == ("cu118", "UV_CUDA_DRIVER_VERSION")
    d = detect_variant({"UV_AMD_GPU_ARCHITECTURE": "gfx1100"}, root=root, run=tools)
    assert (d.variant, d.source) == ("rocm7.2", "UV_AMD_GPU_ARCHITECTURE")
    d = detect_variant({"UV_AMD_GPU_ARCHITECTURE": "gfx1010"}, root=root, run=tools)
    assert d.variant == "cpu" and "unknown to uv" in d.detail
    assert tools.calls == []


def test_sys_module_beats_nvidia_smi(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"sys/module/nvidia/version": "470.256.02\n"})
    d = detect_variant({}, root=root, run=FakeTools(nvidia_smi="570.86.15\n"))
    assert (d.variant, d.source) == ("cu118", "/sys/module/nvidia/version")


def test_intel_display_device_is_xpu(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {
        "sys/bus/pci/devices/0000:00:01.0/class": "0x060400\n",  # a bridge, by Intel
        "sys/bus/pci/devices/0000:00:01.0/vendor": "0x8086\n",
        "sys/bus/pci/devices/0000:00:02.0/class": "0x030000\n",
        "sys/bus/pci/devices/0000:00:02.0/vendor": "0x8086\n",
    })
    d = detect_variant({}, root=root, run=FakeTools())
    assert (d.variant, d.source) == ("xpu", "/sys/bus/pci/devices")
    assert "0000:00:02.0" in d.detail


def test_resolve_variant() -> None:
    d = resolve_variant("cu126", {"UV_CUDA_DRIVER_VERSION": "580"})
    assert (d.variant, d.source) == ("cu126", "config")
    d = resolve_variant("auto", {"UV_CUDA_DRIVER_VERSION": "580"}, run=FakeTools())
    assert (d.variant, d.source) == ("cu132", "UV_CUDA_DRIVER_VERSION")


@pytest.mark.parametrize("name", ["cpu", "cu118", "cu128", "cu132", "rocm6.3", "rocm7.2", "rocm4.0.1", "xpu"])
def test_known_variants_has_uvs_names(name: str) -> None:
    assert name in KNOWN_VARIANTS
    assert len(set(KNOWN_VARIANTS)) == len(KNOWN_VARIANTS)

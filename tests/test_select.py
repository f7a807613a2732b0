"""Selection: the variant's build, the project's Python, this platform — not every tag in the lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmd.lockfile import read_lock
from warmd.select import select_pins, uv_platform, variant_label

PLATFORMS = ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
IDX_CPU = "https://download.pytorch.org/whl/cpu"
IDX_ROCM = "https://download.pytorch.org/whl/rocm6.3"
H = "sha256:" + "0" * 64


def wheel(index: str, name: str, version: str, tag: str, n: int) -> str:
    fname = f"{name.replace('-', '_')}-{version.replace('+', '%2B')}-{tag}.whl"
    return f'{{ url = "{index}/{fname}", hash = "sha256:{n:064x}" }}'


TWO_BUILD = f"""
version = 1
revision = 3
requires-python = ">=3.11"
resolution-markers = ["extra == 'extra-4-proj-cpu'", "extra == 'extra-4-proj-rocm'"]

[manifest]
conflicts = [[{{ package = "proj", extra = "cpu" }}, {{ package = "proj", extra = "rocm" }}]]

[[package]]
name = "proj"
version = "0.1.0"
source = {{ virtual = "." }}

[package.optional-dependencies]
cpu = [{{ name = "torch", version = "2.8.0+cpu", source = {{ registry = "{IDX_CPU}" }} }}]
rocm = [
    {{ name = "torch", version = "2.8.0+rocm6.3", source = {{ registry = "{IDX_ROCM}" }} }},
    {{ name = "pytorch-triton-rocm" }},
]

[[package]]
name = "torch"
version = "2.8.0+cpu"
source = {{ registry = "{IDX_CPU}" }}
dependencies = [{{ name = "filelock" }}]
wheels = [{wheel(IDX_CPU, "torch", "2.8.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", 1)}]

[[package]]
name = "torch"
version = "2.8.0+rocm6.3"
source = {{ registry = "{IDX_ROCM}" }}
dependencies = [
    {{ name = "filelock" }},
    {{ name = "pytorch-triton-rocm", marker = "platform_machine == 'x86_64' and sys_platform == 'linux'" }},
    {{ name = "winonly-gpu", marker = "sys_platform == 'win32'" }},
]
wheels = [
    {wheel(IDX_ROCM, "torch", "2.8.0+rocm6.3", "cp311-cp311-manylinux_2_28_x86_64", 2)},
    {wheel(IDX_ROCM, "torch", "2.8.0+rocm6.3", "cp312-cp312-manylinux_2_28_x86_64", 3)},
    {wheel(IDX_ROCM, "torch", "2.8.0+rocm6.3", "cp312-cp312-win_amd64", 4)},
]

[[package]]
name = "pytorch-triton-rocm"
version = "3.4.0"
source = {{ registry = "{IDX_ROCM}" }}
wheels = [
    {wheel("https://download.pytorch.org/whl", "pytorch-triton-rocm", "3.4.0", "cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64", 5)},
    {wheel("https://download.pytorch.org/whl", "pytorch-triton-rocm", "3.4.0", "cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64", 6)},
]

[[package]]
name = "winonly-gpu"
version = "1.0"
source = {{ registry = "{IDX_ROCM}" }}
wheels = [{wheel(IDX_ROCM, "winonly-gpu", "1.0", "py3-none-win_amd64", 7)}]

[[package]]
name = "filelock"
version = "3.18.0"
source = {{ registry = "https://pypi.org/simple" }}
wheels = [{wheel("https://files.pythonhosted.org/x", "filelock", "3.18.0", "py3-none-any", 8)}]
"""


@pytest.fixture
def lock(tmp_path: Path):
    (tmp_path / "uv.lock").write_text(TWO_BUILD)
    return read_lock(tmp_path / "uv.lock")


def files(sel) -> list[str]:
    return sorted(p.wheel.filename for p in sel.pins)


def test_only_the_variants_build_and_its_dependencies(lock) -> None:
    sel = select_pins(lock, variant="rocm6.3", patterns=["torch", "pytorch-triton*", "winonly-gpu"],
                      pythons=["3.11"], platforms=PLATFORMS)
    assert files(sel) == [
        "pytorch_triton_rocm-3.4.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "torch-2.8.0+rocm6.3-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]
    assert sel.extras == ("rocm",)  # the probe must pass `--extra rocm`, as the user does
    assert "filelock" in sel.installed and "winonly-gpu" not in sel.installed


def test_other_variant_takes_the_other_build(lock) -> None:
    sel = select_pins(lock, variant="cpu", patterns=["torch", "pytorch-triton*"], pythons=["3.11"], platforms=PLATFORMS)
    assert files(sel) == ["torch-2.8.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]
    assert sel.extras == ("cpu",)


def test_variant_absent_from_lock_selects_nothing(lock) -> None:
    assert select_pins(lock, variant="cu128", patterns=["torch"], pythons=["3.11"], platforms=PLATFORMS).pins == ()


def test_python_versions_pick_their_own_wheels(lock) -> None:
    sel = select_pins(lock, variant="rocm6.3", patterns=["torch"], pythons=["3.11", "3.12"], platforms=PLATFORMS)
    assert files(sel) == [
        "torch-2.8.0+rocm6.3-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.8.0+rocm6.3-cp312-cp312-manylinux_2_28_x86_64.whl",
    ]
    assert {p.python for p in sel.pins} == {"3.11", "3.12"}


def test_no_wheel_for_a_python_is_reported_not_fatal(lock) -> None:
    sel = select_pins(lock, variant="rocm6.3", patterns=["torch"], pythons=["3.13"], platforms=PLATFORMS)
    assert sel.pins == ()
    assert any("3.13" in s for s in sel.skipped)


def test_platform_that_glibc_is_too_old_for_gets_nothing(lock) -> None:
    sel = select_pins(lock, variant="rocm6.3", patterns=["torch"], pythons=["3.11"],
                      platforms=["manylinux_2_17_x86_64", "linux_x86_64"])
    assert sel.pins == ()


def test_package_globs(lock) -> None:
    sel = select_pins(lock, variant="rocm6.3", patterns=["file*"], pythons=["3.11"], platforms=PLATFORMS)
    assert files(sel) == ["filelock-3.18.0-py3-none-any.whl"]


@pytest.mark.parametrize(
    "filename, target",
    [
        ("torch-2.8.0-cp311-cp311-manylinux_2_28_x86_64.whl", "x86_64-manylinux_2_28"),
        ("t-3.4.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "x86_64-manylinux_2_28"),
        ("n-12.8-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "x86_64-manylinux_2_17"),
        ("n-12.8-py3-none-manylinux2014_aarch64.whl", "aarch64-manylinux_2_17"),
        ("n-1.0-py3-none-manylinux_2_29_x86_64.whl", "x86_64-manylinux_2_31"),
        ("n-1.0-py3-none-linux_x86_64.whl", "x86_64-unknown-linux-gnu"),
    ],
)
def test_uv_platform_targets(filename: str, target: str) -> None:
    assert uv_platform(filename) == target


def test_variant_labels() -> None:
    assert variant_label("2.8.0+rocm6.3") == "rocm6.3"
    assert variant_label("2.8.0+cu128") == "cu128"
    assert variant_label("2.8.0") is None
    assert variant_label("2.8.0+mybuild") is None

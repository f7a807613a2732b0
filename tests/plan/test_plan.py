"""The plan against uv itself: on every project of the shared corpus of real locks, for every variant its
README lists, `warmd prefetch --dry-run` plans exactly the packages uv's own `uv sync --dry-run` installs (all
of them, warmd's default; and the GPU globs alone when `packages` names them), with the pinned uv and uv 0.8.2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.config import write_warmd_config
from tests.support.prereqs import in_ci
from tests.support.projects import uv_env
from tests.support.uvplan import dry_run, find_interpreter, of_globs, planned, uv_sync_plan
from warmd.base import GPU_PACKAGES
from warmd.uv import LockedPackage, LockedWheel
from warmd.plan import build_of, build_score, is_gpu, parse_export, uv_platform

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "reallocks"

# The README's table: folder, Python, and per variant the flags a user of it passes to `uv sync`.
CASES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "karpathy__autoresearch": ("3.10", {"cu128": []}),
    "nari-labs__dia": ("3.10", {"cu126": []}),
    "karpathy__nanochat": ("3.10", {"cpu": ["--extra", "cpu"], "cu128": ["--extra", "gpu"]}),
    "fishaudio__fish-speech": ("3.10", {v: ["--extra", v] for v in ("cpu", "cu126", "cu128", "cu129")}),
    "catyperry__farmers-eye-pytorch": ("3.12", {"cpu": ["--extra", "cpu"], "cu128": ["--extra", "cu128"],
                                                "rocm6.3": ["--extra", "rocm63"], "rocm6.4": ["--extra", "rocm64"]}),
    "stanford-cs336__assignment2-systems__v1.0.5": ("3.11", {"cu124": []}),
    "nvidia-cosmos__cosmos-predict2.5": ("3.10", {"cu128": []}),
}
PARAMS = [pytest.param(folder, variant, id=f"{folder}-{variant}")
          for folder, (_py, variants) in CASES.items() for variant in variants]


@pytest.fixture(scope="module")
def corpus() -> Path:
    if not CORPUS.is_dir():
        # The corpus lives beside the checkout (../shared/reallocks), never copied into it. Under
        # CI a missing one fails, as every missing prerequisite does (tests/support/prereqs.py).
        why = f"no corpus at {CORPUS} (the real locks live in ../shared/reallocks beside the checkout)"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    return CORPUS


def test_the_cases_are_the_readmes_table(corpus: Path) -> None:
    """A project added to the corpus (or its README) without a case here fails, rather than going untested."""
    rows = re.findall(r"^\| ([\w.-]+__[\w.-]+) \|", (corpus / "README.md").read_text(), flags=re.M)
    assert sorted(rows) == sorted(CASES) == sorted(p.name for p in corpus.iterdir() if p.is_dir())
    assert len(PARAMS) == 14


@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
@pytest.mark.parametrize("folder, variant", PARAMS)
def test_plan_is_what_uv_sync_installs(corpus: Path, folder: str, variant: str, which: str, tmp_path: Path,
                                       uv_bin: Path, request: pytest.FixtureRequest) -> None:
    uv = uv_bin if which == "pinned" else request.getfixturevalue("uv_old_bin")
    python, variants = CASES[folder]
    interpreter = find_interpreter(python, uv_bin)
    project = corpus / folder
    env = uv_env(tmp_path / "uv-cache", extra_path=[interpreter.parent])
    built: set[str] = set()
    plan = uv_sync_plan(uv, project, interpreter, variants[variant], env, built)
    expected = of_globs(plan, GPU_PACKAGES)
    assert expected, "uv installs none of the globs: the case proves nothing"

    config = write_warmd_config(tmp_path, uv, tmp_path / "uv-cache", packages=None, variant=variant,
                                extra=[f"python = {json.dumps([python])}"])
    report = dry_run(config, env, project)["projects"][0]
    assert report["error"] is None
    # Every package, GPU or not; what uv builds from the project's folders is named, skipped, with why.
    builds = {w["name"] for w in report["wheels"] if w["state"] == "skipped" and "built from its folder" in w["reason"]}
    assert builds == built
    assert {(n, v) for n, v in planned(report, python) if n not in builds} == of_globs(plan), report["chosen_by"]
    assert {(n, v) for n, v in planned(report, python) if is_gpu(n)} == expected
    assert report["flags"] == variants[variant], report["chosen_by"]
    assert report["variant"] == variant
    # Every planned wheel is named with its file, or says why warmd leaves it to uv.
    for w in report["wheels"]:
        assert w["filename"] or w["state"] == "skipped", w
        assert w["state"] != "skipped" or w["reason"], w


def test_a_project_table_settles_the_flags(corpus: Path, tmp_path: Path, uv_bin: Path) -> None:
    """cosmos keeps its GPU stack in a default group; `no-default-groups` in a [[project]] table is
    `uv sync --no-default-groups`, and the plan follows uv there too."""
    interpreter = find_interpreter("3.10", uv_bin)
    project = corpus / "nvidia-cosmos__cosmos-predict2.5"
    env = uv_env(tmp_path / "uv-cache", extra_path=[interpreter.parent])
    expected = of_globs(uv_sync_plan(uv_bin, project, interpreter, ["--no-default-groups"], env), GPU_PACKAGES)
    default = of_globs(uv_sync_plan(uv_bin, project, interpreter, [], env), GPU_PACKAGES)
    assert expected != default, "the default groups change nothing here: the case proves nothing"
    config = write_warmd_config(tmp_path, uv_bin, tmp_path / "uv-cache", packages=GPU_PACKAGES, extra=[
        'python = ["3.10"]', "[[project]]", f"path = {json.dumps(str(project))}", "no-default-groups = true"])
    report = dry_run(config, env, project)["projects"][0]
    assert report["flags"] == ["--no-default-groups"]
    assert planned(report, "3.10") == expected


def test_wheels_without_a_sha256_are_named_with_the_reason(corpus: Path, tmp_path: Path, uv_bin: Path) -> None:
    """farmers-eye's nightly ROCm 6.4 extra: nothing hashed, nothing refused; each wheel says why it is skipped."""
    interpreter = find_interpreter("3.12", uv_bin)
    env = uv_env(tmp_path / "uv-cache", extra_path=[interpreter.parent])
    config = write_warmd_config(tmp_path, uv_bin, tmp_path / "uv-cache", packages=GPU_PACKAGES, variant="rocm6.4")
    report = dry_run(config, env, corpus / "catyperry__farmers-eye-pytorch")["projects"][0]
    torch = next(w for w in report["wheels"] if w["name"] == "torch")
    assert torch["state"] == "skipped" and torch["sha256"] is None and torch["verified"] is False
    assert torch["reason"] == "no sha256 in the lock: not verified, left to uv"
    assert torch["filename"].startswith("torch-2.8.0.dev20250608+rocm6.4-cp312-cp312-")
    assert "rocm64" in report["chosen_by"] and "rocm6.4" in report["chosen_by"]


# -- the parts, on their own -------------------------------------------------------------------------------


def _pkg(name: str, version: str, registry: str = "https://pypi.org/simple") -> LockedPackage:
    return LockedPackage(name=name, version=version, registry=registry, is_root=False)


@pytest.mark.parametrize(
    "packages, variant, exact",
    [
        ([_pkg("torch", "2.9.1+cu128", "https://download.pytorch.org/whl/cu128")], "cu128", True),
        ([_pkg("torch", "2.8.0.dev20250608+rocm6.4")], "rocm6.4", True),
        ([_pkg("torch", "2.9.1", "https://download.pytorch.org/whl/cpu")], "cpu", True),  # macOS builds: no label
        ([_pkg("torch", "2.7.1", "https://mirror.example/whl/rocm6.3/")], "rocm6.3", True),
        ([_pkg("torch", "2.6.0"), _pkg("nvidia-cuda-runtime-cu12", "12.4.127")], "cu124", False),
        ([_pkg("torch", "2.10.0"), _pkg("nvidia-cuda-runtime", "13.0.96")], "cu130", False),
        ([_pkg("torch", "2.10.0"), _pkg("nvidia-cublas", "13.1.0.3"), _pkg("cuda-bindings", "13.0.3")], "cu13x", False),
        ([_pkg("torch", "2.5.0"), _pkg("nvidia-nccl-cu12", "2.21.5")], "cu12x", False),
        ([_pkg("torch", "2.5.0")], "cpu", False),
        # every other GPU stack, without torch
        ([_pkg("jax", "0.8.0"), _pkg("jax-cuda13-plugin", "0.8.0"), _pkg("jax-cuda13-pjrt", "0.8.0")], "cu13x", False),
        ([_pkg("jax-cuda12-pjrt", "0.7.2"), _pkg("nvidia-cuda-runtime-cu12", "12.9.79")], "cu129", False),
        ([_pkg("cupy-cuda12x", "13.6.0"), _pkg("numpy", "2.3.0")], "cu12x", False),
        ([_pkg("cupy-cuda117", "10.6.0")], "cu117", False),
        ([_pkg("onnxruntime-gpu", "1.20.1")], "cu12x", False),
        ([_pkg("onnxruntime-gpu", "1.18.0")], "cu11x", False),
        ([_pkg("tensorflow", "2.20.0"), _pkg("nvidia-cublas-cu12", "12.5.3.2")], "cu12x", False),  # tensorflow[and-cuda]
        ([_pkg("cuda-python", "13.0.3"), _pkg("cuda-bindings", "13.0.3")], "cu13x", False),
        ([_pkg("intel-sycl-rt", "2025.2.1"), _pkg("mkl", "2025.2.0")], "xpu", False),
        ([_pkg("triton-rocm", "3.5.0")], "rocm", False),
        ([_pkg("jax", "0.8.0"), _pkg("jaxlib", "0.8.0")], "cpu", False),
        ([_pkg("tensorflow", "2.20.0")], "cpu", False),
    ],
)
def test_the_build_a_torch_is(packages: list[LockedPackage], variant: str, exact: bool) -> None:
    build = build_of(packages)
    assert build is not None and (build.variant, build.exact) == (variant, exact)


def test_builds_score_by_how_sure_the_match_is() -> None:
    by_label = build_of([_pkg("torch", "2.9.1+cu128")])
    inferred = build_of([_pkg("torch", "2.9.1"), _pkg("nvidia-cuda-runtime-cu12", "12.8.90")])
    major = build_of([_pkg("torch", "2.9.1"), _pkg("nvidia-cublas-cu12", "12.8.4.1")])
    assert [build_score(b, "cu128") for b in (by_label, inferred, major)] == [3, 2, 1]
    assert build_score(by_label, "cu126") == 0 and build_score(major, "cu118") == 0
    assert build_of([_pkg("numpy", "2.0.0")]) is None
    assert build_of([_pkg("mkl", "2025.2.0"), _pkg("intel-openmp", "2025.2.1")]) is None  # CPU stacks use them too
    rocm, cupy11 = build_of([_pkg("triton-rocm", "3.5.0")]), build_of([_pkg("cupy-cuda11x", "13.6.0")])
    assert (build_score(rocm, "rocm6.4"), build_score(rocm, "cu128"), build_score(cupy11, "cu118")) == (1, 0, 1)
    assert build_score(cupy11, "cu128") == 0


def test_export_lines_are_read_with_markers_urls_and_hashes() -> None:
    text = (
        "torch==2.9.1+cu128 ; sys_platform == 'linux' \\\n"
        "    --hash=sha256:" + "a" * 64 + " \\\n"
        "    --hash=sha256:" + "B" * 64 + "\n"
        "flash-attn @ https://h/r/flash_attn-2.6.3-cp311-cp311-linux_x86_64.whl ; sys_platform == 'win32'\n"
        "-e ./packages/member\n"
        "Pillow==11.0.0\n"
    )
    torch, fa, member, pillow = parse_export(text)
    assert (torch.name, torch.version, torch.hashes) == ("torch", "2.9.1+cu128", frozenset({"a" * 64, "b" * 64}))
    assert torch.applies({"sys_platform": "linux"}) and not torch.applies({"sys_platform": "darwin"})
    assert fa.url == "https://h/r/flash_attn-2.6.3-cp311-cp311-linux_x86_64.whl" and fa.version is None
    assert not fa.applies({"sys_platform": "linux"})
    assert member.name is None
    assert (pillow.name, pillow.marker) == ("pillow", None)


def test_best_wheel_is_unhashed_then_it_is_skipped_not_swapped() -> None:
    """When the wheel uv would take has no sha256, warmd does not warm a worse one in its place."""
    from warmd.plan.target import _best_wheel, _tag_order

    good = LockedWheel("https://h/t-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                       "t-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", None, None)
    fallback = LockedWheel("https://h/t-1.0-py3-none-any.whl", "t-1.0-py3-none-any.whl", "c" * 64, 1)
    order = _tag_order("3.11", ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64"])
    assert _best_wheel([fallback, good], order) is good


def test_an_sdist_is_skipped_with_its_reason_warmd_never_builds() -> None:
    from warmd.plan.export import _Line
    from warmd.plan.target import _entry, _tag_order

    pkg = LockedPackage(name="oldlib", version="1.0", registry="https://pypi.org/simple", is_root=False, has_sdist=True)
    line = _Line("oldlib", "1.0", None, None, frozenset())
    skipped = _entry(pkg, line, "3.11", _tag_order("3.11", ["manylinux_2_28_x86_64"]))
    assert skipped.name == "oldlib" and "warmd never builds" in skipped.reason
    assert "offline sync needs the network" in skipped.reason


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

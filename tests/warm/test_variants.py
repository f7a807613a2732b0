"""Wheel variants (PEP 825) on the index do not disturb warmd. The index lists, beside each release's
plain wheel, variant-labelled wheels (`torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64-cu130.whl`) and the
release's `torch-2.9.0-variants.json`; uv's lock names only the plain (fallback) wheel, with or
without `--preview-features wheel-variants` (DESIGN.md fact 15). warmd warms exactly that wheel,
fetches no labelled one, and a fresh `uv sync --offline --preview-features wheel-variants` works.
uv 0.13.9 runs the NVIDIA provider itself (no plugin from any index): NV_VARIANT_PROVIDER_FORCE_*
stand in for a driver; uv 0.8.2 knows no variants and must read the same index alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import warmd_json
from tests.support.config import OFFLINE_PACKAGES, write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import TORCH_PLATFORM, make_project, run_uv
from tests.support.wheels import make_wheel, variant_wheel, variants_json
from warmd.uv import read_lock

KiB = 1024
INDEX = "variant"  # served at /whl/variant, as PyTorch's variant index
TAG = f"cp311-cp311-{TORCH_PLATFORM}"
# The two builds of each release, as PyTorch labels them, and what NVIDIA's provider matches on.
VARIANTS = {"cu130": {"nvidia": {"cuda_version_lower_bound": ["13.0"]}},
            "cu128": {"nvidia": {"cuda_version_lower_bound": ["12.8"]}}}
# A driver that takes either build: uv would pick a variant if its lock recorded them.
DRIVER = {"NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION": "13.0", "NV_VARIANT_PROVIDER_FORCE_SM_ARCH": "9.0"}
PREVIEW = ["--preview-features", "wheel-variants"]


def _release(server: IndexServer, wheels: Path, version: str) -> tuple[str, list[str]]:
    """torch `version` on the variant index: its fallback wheel, a labelled wheel per VARIANTS and the
    release's variants.json; returns the fallback's file name and every other file's."""
    out = wheels / INDEX
    fallback = make_wheel(out, "torch", version, TAG, 64 * KiB, requires=["filelock"])
    others = [variant_wheel(fallback, label, props, out) for label, props in VARIANTS.items()]
    others.append(variants_json(out, "torch", version, VARIANTS))
    for f in (fallback, *others):
        server.add_wheel(f, INDEX)
    return fallback.name, [f.name for f in others]


def _project(tmp: Path, server: IndexServer, uv: Path, env: dict[str, str], version: str = "2.8.0") -> Path:
    server.add_wheel(make_wheel(tmp / "wheels" / "plain", "filelock", "3.18.0", "py3-none-any", 4 * KiB), None)
    project = make_project(tmp, "app", server=server, variant=INDEX, deps=[f"torch=={version}"], gpu_packages=["torch"])
    run_uv(uv, ["lock"], cwd=project, env=env)
    return project


def _locked_torch(project: Path) -> list[str]:
    return [w.filename for p in read_lock(project / "uv.lock").packages if p.name == "torch" for w in p.wheels]


def _fetched(server: IndexServer, names: list[str]) -> list[str]:
    return [h.path for h in server.hits if h.method == "GET" and h.path.rsplit("/", 1)[-1] in names]


@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
def test_warmd_warms_the_wheel_the_lock_names_and_a_variant_aware_offline_sync_works(
        tmp_path: Path, which: str, request: pytest.FixtureRequest, index_server: IndexServer,
        uv_cache: Path, uv_environ: dict[str, str]) -> None:
    uv = request.getfixturevalue("uv_bin" if which == "pinned" else "uv_old_bin")
    env = uv_environ | DRIVER
    fallback, labelled = _release(index_server, tmp_path / "wheels", "2.8.0")
    project = _project(tmp_path, index_server, uv, env)
    assert _locked_torch(project) == [fallback]  # uv's lock records the fallback only (fact 15)
    cfg = write_warmd_config(tmp_path, uv, uv_cache, packages=OFFLINE_PACKAGES)
    index_server.reset_counters()

    code, report, err = warmd_json(cfg, "prefetch", str(project), env=env)
    assert code == 0, err
    (torch,) = [w for w in report["projects"][0]["wheels"] if w["name"] == "torch"]
    assert (torch["filename"], torch["state"]) == (fallback, "warm")
    assert _fetched(index_server, labelled) == []  # no labelled wheel, no variants.json: not what uv installs

    # A fresh venv, variant-aware where uv has the preview: no wheel request; then offline too.
    preview = PREVIEW if which == "pinned" else []
    index_server.reset_counters()
    assert "torch==2.8.0" in run_uv(uv, ["sync", *preview], cwd=project, env=env).stderr
    assert index_server.wheel_hits() == [], [(h.method, h.path) for h in index_server.wheel_hits()]
    run_uv(uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=env)
    offline = subprocess.run([str(uv), "sync", "--offline", *preview], cwd=project, env=env,
                             capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr
    assert "torch==2.8.0" in offline.stderr
    installed = list((project / ".venv").glob("lib/python3.11/site-packages/torch-2.8.0.dist-info"))
    assert len(installed) == 1 and not (installed[0] / "variant.json").exists()  # the fallback build
    if which == "pinned":  # the index is real to uv: `uv pip` with the preview picks the driver's build
        target = tmp_path / "pip-target"
        run_uv(uv, ["pip", "install", *PREVIEW, "--no-deps", "--target", str(target), "--index-url",
                    index_server.index_url(INDEX), "torch==2.8.0"], cwd=tmp_path, env=env)
        assert (target / "torch-2.8.0.dist-info" / "variant.json").is_file()
        assert _fetched(index_server, [n for n in labelled if n.endswith("-cu130.whl")])


def test_the_look_ahead_over_a_variant_index_warms_the_fallback_the_would_be_lock_names(
        tmp_path: Path, index_server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """The seed's shape (`torch==2.8.0`) on an index with variants: the next release's fallback is warm,
    and the user's bump, `uv lock` and `uv sync` with the preview then fetch no wheel."""
    env = uv_environ | DRIVER
    _release(index_server, tmp_path / "wheels", "2.8.0")
    project = _project(tmp_path, index_server, uv_bin, env)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES)
    assert warmd_json(cfg, "prefetch", str(project), env=env)[0] == 0
    fallback, labelled = _release(index_server, tmp_path / "wheels", "2.9.0")
    index_server.reset_counters()

    code, report, err = warmd_json(cfg, "prefetch", "--ahead", str(project), env=env)
    assert code == 0, err
    (ahead,) = report["ahead"]
    assert ahead["state"] == "ready", ahead
    assert [(w["filename"], w["state"]) for w in ahead["wheels"]] == [(fallback, "warm")]
    assert _fetched(index_server, [n for n in labelled if n.endswith(".whl")]) == []

    index_server.reset_counters()
    pp = project / "pyproject.toml"
    pp.write_text(pp.read_text().replace("torch==2.8.0", "torch==2.9.0"))
    run_uv(uv_bin, ["lock", *PREVIEW], cwd=project, env=env)
    assert _locked_torch(project) == [fallback]
    synced = run_uv(uv_bin, ["sync", *PREVIEW], cwd=project, env=env)
    assert "torch==2.9.0" in synced.stderr
    assert index_server.wheel_hits() == [], [(h.method, h.path, h.range) for h in index_server.wheel_hits()]

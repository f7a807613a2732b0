"""The plan against uv itself on lab-made locks, for the shapes the shared corpus lacks: a workspace with a
path dependency, CUDA chosen by dependency groups (one of them a default group), CUDA 13's unsuffixed
`nvidia-*`/`cuda-*` names, and two extras bringing the same build. Each lock is made by the real `uv lock`
against the local index; each plan is compared with uv's own `uv sync --dry-run` of the same flags."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import status_json
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, run_uv, torch_like_set, write_project
from tests.support.uvplan import dry_run, find_interpreter, of_globs, planned, prefetch_json, uv_sync_plan
from tests.support.wheels import make_wheel

GLOBS = ["torch", "pytorch-triton*", "nvidia-*", "cuda-*"]
LINUX = "platform_system == 'Linux'"


@dataclass
class Lab:
    tmp: Path
    server: IndexServer
    wheels: Path
    uv: Path
    env: dict[str, str]
    python: Path  # a CPython 3.11 for uv's own plan

    def index(self, name: str, variant: str) -> list[str]:
        return ["[[tool.uv.index]]", f'name = "{name}"', f'url = "{self.server.index_url(variant)}"', "explicit = true", ""]

    def default_index(self) -> list[str]:
        return ["[[tool.uv.index]]", 'name = "pypi"', f'url = "{self.server.simple_url}"', "default = true", ""]

    def check(self, project: Path, variant: str, flags: list[str], *, uv: Path | None = None,
              extra: list[str] = (), packages: list[str] | None = GLOBS) -> dict:  # type: ignore[assignment]
        """warmd's plan for `variant` equals uv's plan for `flags` (of `packages`, None: all of it);
        returns warmd's project report."""
        uv = uv or self.uv
        built: set[str] = set()
        expected = of_globs(uv_sync_plan(uv, project, self.python, flags, self.env, built), packages)
        config = write_warmd_config(self.tmp, uv, self.tmp / "uv-cache", packages=packages, variant=variant,
                                    extra=list(extra))
        report = dry_run(config, self.env, project)["projects"][0]
        assert report["error"] is None, report["error"]
        # What uv builds from the project's folders is named (skipped, with why) where the build needs the network.
        builds = {w["name"] for w in report["wheels"] if "built from its folder" in (w["reason"] or "")}
        assert builds <= built
        assert {(n, v) for n, v in planned(report, "3.11") if n not in builds} == expected, report["chosen_by"]
        assert report["flags"] == flags, report["chosen_by"]
        return report


@pytest.fixture
def lab(tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_environ: dict[str, str]) -> Lab:
    python = find_interpreter("3.11", uv_bin)
    env = dict(uv_environ)
    env["PATH"] = f"{python.parent}:{env['PATH']}"
    return Lab(tmp_path, index_server, wheel_dir, uv_bin, env, python)


def _two_builds(lab: Lab) -> None:
    torch_like_set(lab.server, lab.wheels, "cpu", pythons=("cp311",), size=4096)
    torch_like_set(lab.server, lab.wheels, "cu128", pythons=("cp311",), size=4096)


@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
def test_workspace_members_and_path_dependencies(lab: Lab, which: str, request: pytest.FixtureRequest) -> None:
    """A plain sync installs the root's dependencies (a path dependency's among them); a member's
    torch only with `--all-packages`, asked for in a [[project]] table."""
    uv = lab.uv if which == "pinned" else request.getfixturevalue("uv_old_bin")
    ws = torch_like_set(lab.server, lab.wheels, "cu128", pythons=("cp311",), size=4096)
    nvtx = next(w for w in ws.wheels if w.name.startswith("nvidia_nvtx"))
    lab.server.add_wheel(nvtx, None)  # the path dependency takes it from the default index
    root = write_project(lab.tmp, "ws", "3.11", [
        "[project]", 'name = "ws"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        'dependencies = ["filelock", "helper"]', "",
        "[tool.uv.workspace]", 'members = ["packages/*"]', "",
        "[tool.uv.sources]", 'helper = { path = "libs/helper" }', "",
        *lab.index("pytorch-cu128", "cu128"), *lab.default_index(),
    ])
    write_project(root / "packages", "trainer", "3.11", [
        "[project]", 'name = "trainer"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        f'dependencies = ["{ws.requirement()}", "pytorch-triton"]', "",
        "[tool.uv.sources]", 'torch = { index = "pytorch-cu128" }', 'pytorch-triton = { index = "pytorch-cu128" }', "",
    ])
    write_project(root / "libs", "helper", "3.11", [
        "[project]", 'name = "helper"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        'dependencies = ["nvidia-nvtx-cu12"]', "",
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
    ])
    lock_project(root, lab.uv, lab.env)
    plain = lab.check(root, "cu128", [], uv=uv)
    assert {w["name"] for w in plain["wheels"]} == {"nvidia-nvtx-cu12"}  # via the path dependency
    everything = lab.check(root, "cu128", ["--all-packages"], uv=uv,
                           extra=["[[project]]", f"path = {json.dumps(str(root))}", "all-packages = true"])
    assert {w["name"] for w in everything["wheels"]} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12"}
    assert all(w["state"] == "cold" and w["verified"] for w in everything["wheels"])


def _groups_project(lab: Lab, defaults: list[str]) -> Path:
    _two_builds(lab)
    project = write_project(lab.tmp, "grp", "3.11", [
        "[project]", 'name = "grp"', 'version = "0.1.0"', 'requires-python = ">=3.11"', 'dependencies = ["filelock"]', "",
        "[dependency-groups]", 'dev = ["filelock"]', 'cpu = ["torch==2.8.0+cpu"]',
        'cu128 = ["torch==2.8.0+cu128", "pytorch-triton", "nvidia-nvtx-cu12"]', "",
        "[tool.uv]", f"default-groups = {json.dumps(defaults)}",
        'conflicts = [[{ group = "cpu" }, { group = "cu128" }]]', "",
        "[tool.uv.sources]",
        'torch = [{ index = "pytorch-cpu", group = "cpu" }, { index = "pytorch-cu128", group = "cu128" }]',
        'pytorch-triton = [{ index = "pytorch-cu128", group = "cu128" }]',
        'nvidia-nvtx-cu12 = [{ index = "pytorch-cu128", group = "cu128" }]', "",
        *lab.index("pytorch-cpu", "cpu"), *lab.index("pytorch-cu128", "cu128"), *lab.default_index(),
    ])
    lock_project(project, lab.uv, lab.env)
    return project


@pytest.mark.parametrize("defaults", [["dev"], ["cu128"]], ids=["groups", "gpu-in-a-default-group"])
def test_cuda_chosen_by_dependency_groups(lab: Lab, defaults: list[str]) -> None:
    """Groups in [tool.uv] conflicts, matched by the build they bring; a default group that conflicts with
    the one chosen is left out with `--no-group`, as uv needs."""
    project = _groups_project(lab, defaults)
    in_defaults = "cu128" in defaults
    cu = lab.check(project, "cu128", [] if in_defaults else ["--group", "cu128"])
    assert {(w["name"], w["version"]) for w in cu["wheels"]} >= {("torch", "2.8.0+cu128")}
    assert "group `cu128`" in cu["chosen_by"]
    cpu = lab.check(project, "cpu", ["--group", "cpu"] + (["--no-group", "cu128"] if in_defaults else []))
    assert {(w["name"], w["version"]) for w in cpu["wheels"]} == {("torch", "2.8.0+cpu")}
    _warm_then_offline_sync(lab, project, "cu128", [] if in_defaults else ["--group", "cu128"])


def test_the_probe_asks_uv_about_the_same_groups(lab: Lab) -> None:
    """Warming the cpu group of a project whose default group is CUDA: the probe passes the plan's flags,
    so the wheels are proven warm, and a fresh sync with those flags downloads none of them."""
    project = _groups_project(lab, ["cu128"])
    lab.server.reset_counters()
    config = write_warmd_config(lab.tmp, lab.uv, lab.tmp / "uv-cache", packages=GLOBS, variant="cpu")
    code, report = prefetch_json(config, lab.env, project)
    assert code == 0, report
    wheels = report["projects"][0]["wheels"]
    assert [(w["name"], w["version"], w["state"]) for w in wheels] == [("torch", "2.8.0+cpu", "warm")]
    lab.server.reset_counters()
    run_uv(lab.uv, ["sync", "--group", "cpu", "--no-group", "cu128"], cwd=project, env=lab.env)
    assert [h for h in lab.server.wheel_gets() if "torch-" in h.path] == []


def test_cuda_13_names_from_the_default_index(lab: Lab) -> None:
    """PyPI's newer torch brings CUDA 13 as unsuffixed nvidia-* and cuda-* packages: an extra holding it
    is matched as cu130 (from nvidia-cuda-runtime's version), the other extra as cpu."""
    cpu = torch_like_set(lab.server, lab.wheels, "cpu", version="2.10.0", pythons=("cp311",), size=4096)
    shared = lab.wheels / "cu13"
    deps = {"nvidia-cuda-runtime": ("13.0.96", "py3-none-manylinux_2_27_x86_64"),
            "nvidia-cublas": ("13.1.0.3", "py3-none-manylinux_2_27_x86_64"),
            "cuda-bindings": ("13.0.3", "cp311-cp311-manylinux_2_28_x86_64"),
            "cuda-pathfinder": ("1.3.0", "py3-none-any")}
    for name, (version, tag) in deps.items():
        lab.server.add_wheel(make_wheel(shared, name, version, tag, 2048), None)
    requires = ["filelock"] + [f"{n}=={v}; {LINUX}" for n, (v, _t) in deps.items()]
    lab.server.add_wheel(make_wheel(shared, "torch", "2.10.0", "cp311-cp311-manylinux_2_28_x86_64", 4096,
                                    requires=requires), None)
    project = write_project(lab.tmp, "cu13", "3.11", [
        "[project]", 'name = "cu13"', 'version = "0.1.0"', 'requires-python = ">=3.11"', "dependencies = []", "",
        "[project.optional-dependencies]", f'cpu = ["{cpu.requirement()}"]', 'cuda = ["torch==2.10.0"]', "",
        "[tool.uv]", 'conflicts = [[{ extra = "cpu" }, { extra = "cuda" }]]', "",
        "[tool.uv.sources]", 'torch = [{ index = "pytorch-cpu", extra = "cpu" }]', "",
        *lab.index("pytorch-cpu", "cpu"), *lab.default_index(),
    ])
    lock_project(project, lab.uv, lab.env)
    report = lab.check(project, "cu130", ["--extra", "cuda"])
    assert {w["name"] for w in report["wheels"]} == {"torch", *deps}
    assert "nvidia-cuda-runtime 13.0.96" in report["chosen_by"]
    lab.check(project, "cpu", ["--extra", "cpu"])
    _warm_then_offline_sync(lab, project, "cu130", ["--extra", "cuda"])


def test_two_extras_of_one_build_are_ambiguous_until_a_project_table_settles_it(lab: Lab) -> None:
    _two_builds(lab)
    project = write_project(lab.tmp, "amb", "3.11", [
        "[project]", 'name = "amb"', 'version = "0.1.0"', 'requires-python = ">=3.11"', "dependencies = []", "",
        "[project.optional-dependencies]", 'cpu = ["torch==2.8.0+cpu"]', 'cuda = ["torch==2.8.0+cu128", "pytorch-triton", "nvidia-nvtx-cu12"]',
        'gpu = ["torch==2.8.0+cu128", "pytorch-triton", "nvidia-nvtx-cu12"]', "",
        "[tool.uv]", 'conflicts = [[{ extra = "cpu" }, { extra = "cuda" }, { extra = "gpu" }]]', "",
        "[tool.uv.sources]",
        'torch = [{ index = "pytorch-cpu", extra = "cpu" }, { index = "pytorch-cu128", extra = "cuda" }, '
        '{ index = "pytorch-cu128", extra = "gpu" }]',
        'pytorch-triton = [{ index = "pytorch-cu128", extra = "cuda" }, { index = "pytorch-cu128", extra = "gpu" }]',
        'nvidia-nvtx-cu12 = [{ index = "pytorch-cu128", extra = "cuda" }, { index = "pytorch-cu128", extra = "gpu" }]', "",
        *lab.index("pytorch-cpu", "cpu"), *lab.index("pytorch-cu128", "cu128"), *lab.default_index(),
    ])
    lock_project(project, lab.uv, lab.env)
    guessed = lab.check(project, "cu128", ["--extra", "cuda"])
    assert len(guessed["notes"]) == 1 and "ambiguous" in guessed["notes"][0] and "extra `gpu`" in guessed["notes"][0]
    settled = lab.check(project, "cu128", ["--extra", "gpu"],
                        extra=["[[project]]", f"path = {json.dumps(str(project))}", 'extras = ["gpu"]'])
    assert settled["notes"] == [] and "[[project]]" in settled["chosen_by"]


# -- every GPU stack, and the whole sync warm ----------------------------------------------------------------

CP311 = "cp311-cp311-manylinux_2_28_x86_64"
MANYLINUX = "py3-none-manylinux_2_27_x86_64"


def _wheel(lab: Lab, name: str, version: str, tag: str = "py3-none-any", variant: str | None = None,
           **kw: object) -> Path:
    """A synthetic wheel listed on the variant's index (None: the default one)."""
    path = make_wheel(lab.wheels / (variant or "simple"), name, version, tag, 2048, **kw)  # type: ignore[arg-type]
    lab.server.add_wheel(path, variant)
    return path


def _extras_project(lab: Lab, name: str, extras: dict[str, list[str]], sources: list[str], indexes: list[str]) -> Path:
    """A project whose extras conflict with each other, one per build, locked by the real uv."""
    project = write_project(lab.tmp, name, "3.11", [
        "[project]", f'name = "{name}"', 'version = "0.1.0"', 'requires-python = ">=3.11"', "dependencies = []", "",
        "[project.optional-dependencies]", *(f"{e} = {json.dumps(reqs)}" for e, reqs in extras.items()), "",
        "[tool.uv]", f"conflicts = [[{', '.join('{ extra = %s }' % json.dumps(e) for e in extras)}]]", "",
        "[tool.uv.sources]", *sources, "",
        *(line for v in indexes for line in lab.index(f"pytorch-{v}", v)), *lab.default_index(),
    ])
    lock_project(project, lab.uv, lab.env)
    return project


def _cpu_torch(lab: Lab) -> str:
    torch_like_set(lab.server, lab.wheels, "cpu", pythons=("cp311",), size=4096)
    return 'torch = [{ index = "pytorch-cpu", extra = "cpu" }]'


def _warm_then_offline_sync(lab: Lab, project: Path, variant: str, flags: list[str]) -> dict:
    """`warmd prefetch` with its default (every wheel of the sync) into a fresh uv cache; then a fresh venv's
    `uv sync --frozen --offline` with the plan's flags installs the whole project, asking the index nothing."""
    cache = lab.tmp / "fresh-cache"
    env = {**lab.env, "UV_CACHE_DIR": str(cache)}
    config = write_warmd_config(lab.tmp, lab.uv, cache, packages=None, variant=variant)
    code, report = prefetch_json(config, env, project)
    assert code == 0, report
    lab.server.reset_counters()
    venv = lab.tmp / f"venv-{project.name}"
    proc = run_uv(lab.uv, ["sync", "--frozen", "--offline", *flags], cwd=project,
                  env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)})
    assert "Installed" in proc.stderr and venv.is_dir()
    assert lab.server.wheel_gets() == []
    return report["projects"][0]


def test_a_jax_cuda_13_extra_without_torch_is_the_cuda_build(lab: Lab) -> None:
    """The held-out miss: `cuda` brings `jax[cuda13]` (plugin, PJRT, unsuffixed CUDA 13 wheels) and no torch,
    `cpu` brings a CPU torch. A CUDA 13 machine syncs `--extra cuda`, a CPU one `--extra cpu`; the whole plan
    is uv's, and after a warm a fresh venv syncs offline."""
    cpu = _cpu_torch(lab)
    cuda13 = {"nvidia-cuda-runtime": "13.0.96", "nvidia-cublas": "13.1.0.3", "nvidia-nvjitlink": "13.0.88"}
    for n, v in cuda13.items():
        _wheel(lab, n, v, MANYLINUX)
    _wheel(lab, "cuda-bindings", "13.0.3", CP311)
    _wheel(lab, "cuda-python", "13.0.3", requires=["cuda-bindings==13.0.3"])
    _wheel(lab, "jax-cuda13-pjrt", "0.8.0", MANYLINUX)
    _wheel(lab, "jax-cuda13-plugin", "0.8.0", CP311, requires=["jax-cuda13-pjrt==0.8.0", "cuda-python==13.0.3",
                                                                *(f"{n}=={v}" for n, v in cuda13.items())])
    _wheel(lab, "jaxlib", "0.8.0", CP311, requires=["numpy"])
    _wheel(lab, "numpy", "2.3.0", CP311)
    _wheel(lab, "jax", "0.8.0", requires=["jaxlib==0.8.0", 'jax-cuda13-plugin==0.8.0; extra == "cuda13"'],
           extras=["cuda13"])
    project = _extras_project(lab, "jax13", {"cpu": ["torch==2.8.0+cpu"], "cuda": ["jax[cuda13]==0.8.0"]}, [cpu], ["cpu"])
    report = lab.check(project, "cu130", ["--extra", "cuda"], packages=None)
    names = {w["name"] for w in report["wheels"]}
    assert {"jax-cuda13-plugin", "jax-cuda13-pjrt", "nvidia-cublas", "cuda-bindings", "numpy", "jax"} <= names
    assert "torch" not in names and "extra `cuda`" in report["chosen_by"]
    assert "nvidia-cuda-runtime 13.0.96" in report["chosen_by"]
    assert lab.check(project, "cpu", ["--extra", "cpu"], packages=None)["flags"] == ["--extra", "cpu"]
    warm = _warm_then_offline_sync(lab, project, "cu130", ["--extra", "cuda"])
    assert {w["state"] for w in warm["wheels"]} == {"warm"}


def test_cupy_extras_are_told_apart_by_their_cuda_major(lab: Lab) -> None:
    """CuPy names only the CUDA major (`cupy-cuda11x`, `cupy-cuda12x`): a cu128 machine takes the CUDA 12 extra,
    a cu118 one the CUDA 11 extra."""
    _wheel(lab, "numpy", "2.3.0", CP311)
    _wheel(lab, "fastrlock", "0.8.3", CP311)
    for major in (11, 12):
        _wheel(lab, f"cupy-cuda{major}x", "13.6.0", CP311, requires=["numpy", "fastrlock"])
    project = _extras_project(lab, "cupy", {"cuda11": ["cupy-cuda11x==13.6.0"], "cuda12": ["cupy-cuda12x==13.6.0"]},
                              [], [])
    report = lab.check(project, "cu128", ["--extra", "cuda12"], packages=None)
    assert "cupy-cuda12x 13.6.0" in report["chosen_by"]
    lab.check(project, "cu118", ["--extra", "cuda11"], packages=None)
    _warm_then_offline_sync(lab, project, "cu128", ["--extra", "cuda12"])


def test_an_xpu_extra_brings_intel_runtime_wheels_from_the_default_index(lab: Lab) -> None:
    """An XPU torch from its index pulls Intel's runtime from PyPI (`intel-sycl-rt`, `mkl`, `oneccl`...): all of
    it is in the plan now, not only the names a list held."""
    _cpu_torch(lab)
    runtime = {"intel-sycl-rt": "2025.2.1", "intel-opencl-rt": "2025.2.1", "mkl": "2025.2.0", "impi-rt": "2021.16.1",
               "oneccl": "2021.16.1", "intel-openmp": "2025.2.1", "tcmlib": "1.4.0", "umf": "0.11.0"}
    for n, v in runtime.items():
        _wheel(lab, n, v, MANYLINUX)
    _wheel(lab, "pytorch-triton-xpu", "3.4.0", CP311, variant="xpu")
    _wheel(lab, "torch", "2.8.0+xpu", CP311, variant="xpu",
           requires=["filelock", "pytorch-triton-xpu==3.4.0", *(f"{n}=={v}; {LINUX}" for n, v in runtime.items())])
    project = _extras_project(lab, "xpu", {"cpu": ["torch==2.8.0+cpu"], "xpu": ["torch==2.8.0+xpu", "pytorch-triton-xpu"]},
                              ['torch = [{ index = "pytorch-cpu", extra = "cpu" }, { index = "pytorch-xpu", extra = "xpu" }]',
                               'pytorch-triton-xpu = [{ index = "pytorch-xpu", extra = "xpu" }]'], ["cpu", "xpu"])
    report = lab.check(project, "xpu", ["--extra", "xpu"], packages=None)
    assert set(runtime) | {"torch", "pytorch-triton-xpu", "filelock"} == {w["name"] for w in report["wheels"]}
    lab.check(project, "cpu", ["--extra", "cpu"], packages=None)
    _warm_then_offline_sync(lab, project, "xpu", ["--extra", "xpu"])


def test_a_rocm_extra_brings_triton_rocm(lab: Lab) -> None:
    _cpu_torch(lab)
    _wheel(lab, "triton-rocm", "3.5.0", CP311, variant="rocm6.4")
    _wheel(lab, "torch", "2.9.0+rocm6.4", CP311, variant="rocm6.4", requires=["filelock", f"triton-rocm==3.5.0; {LINUX}"])
    project = _extras_project(lab, "rocm", {"cpu": ["torch==2.8.0+cpu"], "rocm": ["torch==2.9.0+rocm6.4", "triton-rocm"]},
                              ['torch = [{ index = "pytorch-cpu", extra = "cpu" }, { index = "pytorch-rocm6.4", extra = "rocm" }]',
                               'triton-rocm = [{ index = "pytorch-rocm6.4", extra = "rocm" }]'], ["cpu", "rocm6.4"])
    report = lab.check(project, "rocm6.4", ["--extra", "rocm"], packages=None)
    assert {w["name"] for w in report["wheels"]} == {"torch", "triton-rocm", "filelock"}
    _warm_then_offline_sync(lab, project, "rocm6.4", ["--extra", "rocm"])


def _packaged(lab: Lab, name: str, build_system: list[str]) -> Path:
    """A project that is a package (uv builds it at sync), with a CUDA torch and a plain dependency."""
    ws = torch_like_set(lab.server, lab.wheels, "cu128", pythons=("cp311",), size=4096)
    project = write_project(lab.tmp, name, "3.11", [
        "[project]", f'name = "{name}"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        f'dependencies = ["{ws.requirement()}", "pytorch-triton", "nvidia-nvtx-cu12"]', "", *build_system, "",
        "[tool.uv.sources]", *(f'{n} = {{ index = "pytorch-cu128" }}' for n in ws.gpu_packages), "",
        *lab.index("pytorch-cu128", "cu128"), *lab.default_index(),
    ])
    (project / "src" / name).mkdir(parents=True)
    (project / "src" / name / "__init__.py").write_text("")
    lock_project(project, lab.uv, lab.env)
    return project


def test_a_build_backend_from_the_index_is_named_and_the_sync_without_the_project_is_offline(lab: Lab) -> None:
    """uv builds the project itself with hatchling, which it would fetch: warmd never builds, so the plan
    names the project as skipped with why, status shows it, and that is true: offline, the sync without
    `--no-install-project` fails for want of the backend, and with it succeeds."""
    project = _packaged(lab, "hatched", ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"'])
    report = lab.check(project, "cu128", [], packages=None)
    [built] = [w for w in report["wheels"] if w["name"] == "hatched"]
    assert built["state"] == "skipped" and "hatchling.build (hatchling)" in built["reason"]
    assert "`uv sync --no-install-project` does not build it" in built["reason"]
    warm = _warm_then_offline_sync(lab, project, "cu128", ["--no-install-project"])
    assert {w["name"] for w in warm["wheels"] if w["state"] == "warm"} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12",
                                                                           "filelock"}
    [status] = status_json(lab.tmp / "warmd.toml", env=lab.env)
    assert any(s["name"] == "hatched" and "hatchling" in s["reason"] for s in status["skipped"]), status["skipped"]
    offline = subprocess.run([str(lab.uv), "sync", "--frozen", "--offline"], cwd=project, capture_output=True, text=True,
                             env={**lab.env, "UV_CACHE_DIR": str(lab.tmp / "fresh-cache"),
                                  "UV_PROJECT_ENVIRONMENT": str(lab.tmp / "other-venv")}, timeout=240)
    assert offline.returncode != 0 and "hatchling" in offline.stderr


@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
def test_a_uv_build_backend_needs_nothing_from_the_network(lab: Lab, which: str, request: pytest.FixtureRequest) -> None:
    """`uv_build` in a range holding the running uv: uv builds the project with its own code, so the whole
    sync, project included, is offline after a warm."""
    uv = lab.uv if which == "pinned" else request.getfixturevalue("uv_old_bin")
    project = _packaged(lab, "uvbuilt", ["[build-system]", 'requires = ["uv_build>=0.8.0,<1"]', 'build-backend = "uv_build"'])
    report = lab.check(project, "cu128", [], packages=None, uv=uv)
    assert all(w["state"] != "skipped" for w in report["wheels"]), report["wheels"]
    lab.uv = uv
    _warm_then_offline_sync(lab, project, "cu128", [])

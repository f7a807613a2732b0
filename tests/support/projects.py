"""Real uv projects against the local index: pyproject.toml writers, `uv lock`, a torch-like wheel set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.index_server import IndexServer, normalize
from tests.support.wheels import make_wheel

DEFAULT_TORCH = "2.8.0"
TRITON_VERSION = "3.4.0"
NVTX_VERSION = "12.8.90"
FILELOCK_VERSION = "3.18.0"
TORCH_PLATFORM = "manylinux_2_28_x86_64"


def uv_env(cache_dir: Path, *, extra_path: list[Path] | None = None) -> dict[str, str]:
    """os.environ without UV_* (and VIRTUAL_ENV), pointed at cache_dir, loopback unproxied, uv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
    cache_dir = Path(cache_dir)
    env["UV_CACHE_DIR"] = str(cache_dir)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    # keep a developer's ~/.config/uv/uv.toml and /etc/uv out of tests, but not the project's own
    # [tool.uv] (UV_NO_CONFIG would drop that too): point uv's user/system config lookup at an
    # empty folder. An explicit --config-file (what warmd passes) is unaffected.
    empty = cache_dir.parent / f"{cache_dir.name}-xdg-config"
    empty.mkdir(parents=True, exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(empty)
    env["XDG_CONFIG_DIRS"] = str(empty)
    # the index lives on 127.0.0.1: never send it through a proxy from the developer's shell
    no_proxy = ",".join(x for x in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1,localhost") if x)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    dirs = [str(p) for p in (extra_path or [])] + [str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(dirs + [env.get("PATH", "")])
    return env


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def _with_direct(deps: list[str], packages: list[str]) -> list[str]:
    named = {normalize(re.split(r"[\s\[<>=!~;@(]", d, maxsplit=1)[0]) for d in deps}
    return list(deps) + [p for p in packages if normalize(p) not in named]


def _head(name: str, python: str, deps: list[str]) -> list[str]:
    return [
        "[project]",
        f"name = {_toml_str(name)}",
        'version = "0.1.0"',
        f'requires-python = ">={python}"',
        f"dependencies = {_toml_list(deps)}",
        "",
    ]


def _default_index(server: IndexServer) -> list[str]:
    return ["[[tool.uv.index]]", 'name = "pypi"', f"url = {_toml_str(server.simple_url)}", "default = true", ""]


def write_project(root: Path, name: str, python: str, lines: list[str]) -> Path:
    """Write root/name/pyproject.toml from `lines` and a .python-version; return the project folder."""
    project = Path(root) / name
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text("\n".join(lines))
    (project / ".python-version").write_text(python + "\n")
    return project


def make_project(
    root: Path,
    name: str,
    *,
    server: IndexServer,
    variant: str,
    deps: list[str],
    gpu_packages: list[str],
    python: str = "3.11",
    index_cache_control: str | None = None,
) -> Path:
    """Write a uv project at root/name whose gpu_packages come from the server's variant index.

    uv applies `[tool.uv.sources]` to direct dependencies only, so a GPU package not named in
    deps (pytorch-triton, nvidia-*) is added as an unpinned direct dependency, as uv's PyTorch
    guide does for pytorch-triton-rocm.
    index_cache_control, when given, adds uv's per-index `cache-control = { files = ... }`
    override to the variant index (the manual fix warmd automates).
    """
    index_name = f"pytorch-{variant}"
    lines = _head(name, python, _with_direct(deps, gpu_packages))
    lines += ["[[tool.uv.index]]", f'name = "{index_name}"', f"url = {_toml_str(server.index_url(variant))}", "explicit = true"]
    if index_cache_control is not None:
        lines.append(f"cache-control = {{ files = {_toml_str(index_cache_control)} }}")
    lines.append("")
    lines += _default_index(server)
    lines.append("[tool.uv.sources]")
    lines += [f'{pkg} = [{{ index = "{index_name}" }}]' for pkg in gpu_packages]
    lines.append("")
    return write_project(root, name, python, lines)


def make_two_build_project(
    root: Path,
    name: str,
    *,
    server: IndexServer,
    extras: dict[str, list[str]],
    gpu_packages: list[str] | dict[str, list[str]],
    deps: list[str] = (),  # type: ignore[assignment]
    python: str = "3.11",
) -> Path:
    """Write uv's conflicting-extras project: one extra per variant, each sourcing the GPU packages
    from its own index (uv docs, "Using uv with PyTorch": `conflicts` + `extra =` sources).
    GPU packages missing from an extra are added to it unpinned (sources bind direct deps only).

    extras maps variant -> that extra's requirements, e.g. {"cpu": ["torch==2.8.0+cpu"],
    "cu128": ["torch==2.8.0+cu128"]}; gpu_packages is one list for every extra or variant -> list
    (e.g. {"cpu": ["torch"], "cu128": ["torch", "pytorch-triton", "nvidia-nvtx-cu12"]}).
    """
    lines = _head(name, python, list(deps))
    lines.append("[project.optional-dependencies]")
    per_extra = gpu_packages if isinstance(gpu_packages, dict) else {v: list(gpu_packages) for v in extras}
    lines += [f"{v} = {_toml_list(_with_direct(reqs, per_extra.get(v, [])))}" for v, reqs in extras.items()]
    lines += ["", "[tool.uv]"]
    lines.append("conflicts = [[" + ", ".join(f'{{ extra = "{v}" }}' for v in extras) + "]]")
    lines.append("")
    for variant in extras:
        lines += [
            "[[tool.uv.index]]",
            f'name = "pytorch-{variant}"',
            f"url = {_toml_str(server.index_url(variant))}",
            "explicit = true",
            "",
        ]
    lines += _default_index(server)
    lines.append("[tool.uv.sources]")
    packages = list(dict.fromkeys(p for pkgs in per_extra.values() for p in pkgs))
    for pkg in packages:
        entries = ", ".join(f'{{ index = "pytorch-{v}", extra = "{v}" }}' for v in extras if pkg in per_extra.get(v, []))
        lines.append(f"{pkg} = [{entries}]")
    lines.append("")
    return write_project(root, name, python, lines)


def pinned_project(root: Path, name: str, *, server: IndexServer, ws: WheelSet, deps: list[str] | None = None,
                   python: str = "3.11", index_cache_control: str | None = None) -> Path:
    """make_project for the release `ws`: its variant's index, its GPU packages, and `deps` (None: ws's
    torch pin, `ws.requirement()`). Written again over a project, it re-pins it (then lock it anew)."""
    return make_project(root, name, server=server, variant=ws.variant,
                        deps=[ws.requirement()] if deps is None else list(deps), gpu_packages=ws.gpu_packages,
                        python=python, index_cache_control=index_cache_control)


def locked_project(root: Path, name: str, *, server: IndexServer, ws: WheelSet, uv: Path, env: dict[str, str],
                   deps: list[str] | None = None, python: str = "3.11",
                   index_cache_control: str | None = None) -> Path:
    """A project at root/name pinned to the release `ws` (pinned_project) and locked by the real `uv lock`
    against the local index; returns the project folder (its uv.lock beside the pyproject.toml)."""
    project = pinned_project(root, name, server=server, ws=ws, deps=deps, python=python,
                             index_cache_control=index_cache_control)
    lock_project(project, uv, env)
    return project


def run_uv(uv: Path, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run uv; raise RuntimeError carrying uv's stderr when it fails."""
    proc = subprocess.run([str(uv), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"uv {' '.join(args)} failed ({proc.returncode}) in {cwd}:\n{proc.stderr.strip()}")
    return proc


def lock_project(project: Path, uv: Path, env: dict[str, str]) -> Path:
    """Run the real `uv lock` in project and return its uv.lock."""
    run_uv(uv, ["lock"], cwd=project, env=env)
    lock = Path(project) / "uv.lock"
    if not lock.is_file():
        raise RuntimeError(f"uv lock wrote no {lock}")
    return lock


@dataclass
class WheelSet:
    """What torch_like_set built and listed on the server."""

    variant: str
    torch_version: str  # with the local part, e.g. "2.8.0+cu128"
    wheels: list[Path] = field(default_factory=list)  # GPU wheels, on the variant index
    default_wheels: list[Path] = field(default_factory=list)  # plain deps, on /simple
    gpu_packages: list[str] = field(default_factory=list)  # pass to make_project(gpu_packages=)

    @property
    def filenames(self) -> list[str]:
        """Filenames of the GPU wheels."""
        return [w.name for w in self.wheels]

    def requirement(self) -> str:
        """The pin a project puts in its dependencies, e.g. "torch==2.8.0+cu128"."""
        return f"torch=={self.torch_version}"


def torch_like_set(
    server: IndexServer,
    out_dir: Path,
    variant: str,
    version: str = DEFAULT_TORCH,
    pythons: tuple[str, ...] = ("cp311", "cp312"),
    size: int = 256 * 1024,
    *,
    with_nvidia: bool | None = None,
) -> WheelSet:
    """Build and list a small PyTorch-like release for one variant.

    torch `version+variant` per Python tag (manylinux_2_28_x86_64) requiring filelock (on the
    default index) and, Linux only as real torch does, pytorch-triton (not for cpu) and, for cu*
    variants, nvidia-nvtx-cu12; those two live on the variant index. Sizes: torch `size` bytes of
    payload, the others a quarter of it. Calling it again for another variant reuses the
    triton/nvidia/filelock files (same bytes, listed on that variant's index too).
    """
    out = Path(out_dir) / variant
    if with_nvidia is None:
        with_nvidia = variant.startswith("cu")
    with_triton = variant != "cpu"
    torch_version = f"{version}+{variant}"
    linux = "platform_system == 'Linux'"
    requires = ["filelock"]
    ws = WheelSet(variant=variant, torch_version=torch_version, gpu_packages=["torch"])
    if with_triton:
        requires.append(f"pytorch-triton=={TRITON_VERSION}; {linux}")
        ws.gpu_packages.append("pytorch-triton")
    if with_nvidia:
        requires.append(f"nvidia-nvtx-cu12=={NVTX_VERSION}; {linux}")
        ws.gpu_packages.append("nvidia-nvtx-cu12")
    shared = Path(out_dir) / "_shared"
    for py in pythons:
        tag = f"{py}-{py}-{TORCH_PLATFORM}"
        ws.wheels.append(make_wheel(out, "torch", torch_version, tag, size, requires=requires))
        if with_triton:
            # PyTorch's triton wheels carry a compressed platform tag set
            ttag = f"{py}-{py}-manylinux_2_27_x86_64.manylinux_2_28_x86_64"
            ws.wheels.append(make_wheel(shared, "pytorch-triton", TRITON_VERSION, ttag, max(1024, size // 4)))
    if with_nvidia:
        ntag = "py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64"
        ws.wheels.append(make_wheel(shared, "nvidia-nvtx-cu12", NVTX_VERSION, ntag, max(1024, size // 4)))
    for w in ws.wheels:
        server.add_wheel(w, variant)
    ws.default_wheels.append(make_wheel(shared, "filelock", FILELOCK_VERSION, "py3-none-any", 4096))
    for w in ws.default_wheels:
        server.add_wheel(w, None)
    return ws

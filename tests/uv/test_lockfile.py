"""The lock reader: real uv.lock shapes parse; hostile or broken ones are refused with a LockError."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmd.base import LockError
from warmd.uv import check_wheel_url, parse_lock, parse_wheel_name, read_lock

SHA = "ab" * 32
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cuda-small" / "uv.lock"


def lock_text(url: str, *, name: str = "torch", version: str = "2.8.0+rocm6.3", hash_: str = f"sha256:{SHA}") -> str:
    return (
        'version = 1\nrevision = 3\nrequires-python = ">=3.11"\n\n'
        '[[package]]\nname = "proj"\nversion = "0.1.0"\nsource = { virtual = "." }\n'
        f'dependencies = [{{ name = "{name}" }}]\n\n'
        f'[[package]]\nname = "{name}"\nversion = "{version}"\n'
        'source = { registry = "https://download.pytorch.org/whl/rocm6.3" }\n'
        f'wheels = [{{ url = "{url}", hash = "{hash_}" }}]\n'
    )


def test_reads_a_real_uv_lock() -> None:
    lock = read_lock(EXAMPLE)
    names = {p.name for p in lock.packages}
    assert {"nvidia-cuda-runtime-cu12", "nvidia-nvtx-cu12", "nvidia-cuda-cupti-cu12"} <= names
    assert [p.name for p in lock.roots] == ["cuda-small"]
    nvtx = next(p for p in lock.packages if p.name == "nvidia-nvtx-cu12")
    assert nvtx.registry == "https://pypi.org/simple"
    assert all(len(w.sha256) == 64 and w.size for w in nvtx.wheels)


def test_percent_encoded_local_version_is_decoded(tmp_path: Path) -> None:
    url = "https://download.pytorch.org/whl/rocm6.3/torch-2.8.0%2Brocm6.3-cp312-cp312-manylinux_2_28_x86_64.whl"
    (tmp_path / "uv.lock").write_text(lock_text(url))
    torch = next(p for p in read_lock(tmp_path / "uv.lock").packages if p.name == "torch")
    assert torch.wheels[0].filename == "torch-2.8.0+rocm6.3-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert torch.wheels[0].size is None  # PyTorch-index wheels often carry no size


@pytest.mark.parametrize(
    "url, words",
    [
        ("file:///etc/torch-2.8.0+rocm6.3-py3-none-any.whl", "scheme"),
        ("ftp://h/torch-2.8.0+rocm6.3-py3-none-any.whl", "scheme"),
        ("https://h/whl/..", "plain wheel"),
        ("https://h/a/../torch-2.8.0+rocm6.3-py3-none-any.whl", "plain wheel"),
        ("https://h/whl/..%2Ftorch-2.8.0+rocm6.3-py3-none-any.whl", "plain wheel"),
        ("https://h/whl/%2Fetc%2Ftorch-2.8.0+rocm6.3-py3-none-any.whl", "plain wheel"),
        ("https://h/whl/torch-2.8.0+rocm6.3-py3-none-any.tar.gz", "plain wheel"),
        ("https://h/whl/numpy-2.8.0+rocm6.3-py3-none-any.whl", "belongs to"),
        ("https://h/whl/torch-2.7.0+rocm6.3-py3-none-any.whl", "version"),
        ("https://h/whl/torch.whl", "valid wheel"),
    ],
)
def test_unsafe_urls_are_refused(tmp_path: Path, url: str, words: str) -> None:
    (tmp_path / "uv.lock").write_text(lock_text(url))
    with pytest.raises(LockError, match=words) as info:
        read_lock(tmp_path / "uv.lock")
    assert str(tmp_path / "uv.lock") in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_hash_is_refused(tmp_path: Path) -> None:
    url = "https://h/whl/torch-2.8.0+rocm6.3-py3-none-any.whl"
    for bad in ("sha256:xyz", "", "sha256:" + "a" * 63):
        (tmp_path / "uv.lock").write_text(lock_text(url, hash_=bad))
        with pytest.raises(LockError, match="malformed hash"):
            read_lock(tmp_path / "uv.lock")


def test_a_wheel_without_a_sha256_is_kept_unverified_not_refused(tmp_path: Path) -> None:
    """Nightly indexes and mirrors publish no hashes: the lock is read, the wheel marked as unverifiable."""
    url = "https://h/whl/torch-2.8.0+rocm6.3-py3-none-any.whl"
    text = lock_text(url).replace(f', hash = "sha256:{SHA}"', "")
    (tmp_path / "uv.lock").write_text(text)
    wheel = next(p for p in read_lock(tmp_path / "uv.lock").packages if p.name == "torch").wheels[0]
    assert wheel.sha256 is None and wheel.file() is None
    (tmp_path / "uv.lock").write_text(lock_text(url, hash_="md5:" + "0" * 32))
    wheel = next(p for p in read_lock(tmp_path / "uv.lock").packages if p.name == "torch").wheels[0]
    assert wheel.sha256 is None  # a hash warmd does not check counts as none


def test_direct_url_wheel_and_conflicts_are_read(tmp_path: Path) -> None:
    url = "https://github.com/o/r/releases/download/v1/flash_attn-2.6.3+cu128-cp311-cp311-linux_x86_64.whl"
    (tmp_path / "uv.lock").write_text(
        'version = 1\nrevision = 3\nrequires-python = ">=3.11"\n'
        'conflicts = [[{ package = "proj", extra = "cpu" }, { package = "proj", group = "gpu" }]]\n\n'
        '[[package]]\nname = "proj"\nversion = "0.1.0"\nsource = { virtual = "." }\n\n'
        f'[[package]]\nname = "flash-attn"\nversion = "2.6.3+cu128"\nsource = {{ url = "{url}" }}\n'
        f'wheels = [{{ url = "{url}", hash = "sha256:{SHA}" }}]\n'
    )
    lock = read_lock(tmp_path / "uv.lock")
    fa = next(p for p in lock.packages if p.name == "flash-attn")
    assert fa.url == url and fa.registry is None and fa.source == "url" and fa.wheels[0].sha256 == SHA
    assert [(i.package, i.extra, i.group) for i in lock.conflicts[0]] == [("proj", "cpu", None), ("proj", None, "gpu")]


def test_wheel_variant_label_is_tolerated() -> None:
    name, version = parse_wheel_name("torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64-cu128.whl")
    assert (name, str(version)) == ("torch", "2.9.0")
    assert check_wheel_url("https://h/torch-2.9.0-cp312-cp312-linux_x86_64-00000000.whl", "torch", "2.9.0", "x")


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "not a uv.lock"),
        ("version = 1\npackage = 3\n", "array of tables"),
        ('version = 1\n[[package]]\nversion = "1"\n', "no name"),
        ('version = 1\n[[package]]\nname = "x"\nsource = "pypi"\n', "source"),
    ],
)
def test_malformed_locks(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "uv.lock").write_text(text)
    with pytest.raises(LockError, match=words):
        read_lock(tmp_path / "uv.lock")


def test_truncated_lock_names_the_file(tmp_path: Path) -> None:
    full = EXAMPLE.read_text()
    (tmp_path / "uv.lock").write_text(full[: len(full) // 2])
    with pytest.raises(LockError, match="uv.lock"):
        read_lock(tmp_path / "uv.lock")


def test_missing_and_binary_locks(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="run `uv lock`"):
        read_lock(tmp_path / "uv.lock")
    (tmp_path / "uv.lock").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LockError):
        read_lock(tmp_path / "uv.lock")


def test_large_lock_parses(tmp_path: Path) -> None:
    """A lock of a big monorepo (thousands of packages) is read, not refused."""
    parts = ['version = 1\nrequires-python = ">=3.11"\n']
    for i in range(4000):
        parts.append(
            f'[[package]]\nname = "pkg{i}"\nversion = "1.0"\nsource = {{ registry = "https://pypi.org/simple" }}\n'
            f'wheels = [{{ url = "https://h/pkg{i}-1.0-py3-none-any.whl", hash = "sha256:{SHA}", size = 1 }}]\n'
        )
    (tmp_path / "uv.lock").write_text("\n".join(parts))
    assert len(read_lock(tmp_path / "uv.lock").packages) == 4000


_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["version", "package", "manifest", "requires-python", "x"]), _toml_values, max_size=5))
def test_any_structure_is_a_lock_or_a_lock_error(data: dict) -> None:
    data = {k: v for k, v in data.items() if v is not None}
    try:
        parse_lock(data, Path("uv.lock"))
    except LockError as exc:
        assert str(exc).startswith("uv.lock")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_any_file_name_is_accepted_only_if_plain(name: str) -> None:
    url = "https://h/whl/" + name
    try:
        got = check_wheel_url(url, "torch", "2.8.0", "x")
    except LockError:
        return
    assert "/" not in got and ".." not in got and got.endswith(".whl") and got.startswith("torch-")


_FULL = EXAMPLE.read_text()


def _prefix(cut: object, whole: object) -> bool:
    """What a cut kept of a TOML value: a table may have lost keys (recursively), anything else is whole."""
    if isinstance(cut, dict) and isinstance(whole, dict):
        return all(k in whole and _prefix(v, whole[k]) for k, v in cut.items())
    return cut == whole


def test_truncation_at_every_byte_is_a_clean_error_or_exactly_what_is_left() -> None:
    """Every cut of the example lock (all of them: the file is small) that is still TOML is refused
    only when it lost `version` or its last package's name; otherwise every [[package]] left
    parses to exactly what its TOML says (tomllib is the oracle)."""
    parsed = 0
    for cut in range(len(_FULL) + 1):
        try:
            data = tomllib.loads(_FULL[:cut])
        except tomllib.TOMLDecodeError:
            continue
        parsed += 1
        _check_cut(data)
    assert parsed > 20  # the lock has many cut points that are valid TOML (between lines, tables)


def _check_cut(data: dict) -> None:
    raw_full, raw_cut = tomllib.loads(_FULL)["package"], data.get("package", [])
    assert len(raw_cut) <= len(raw_full) and all(_prefix(raw, whole) for raw, whole in zip(raw_cut, raw_full))
    try:
        lock = parse_lock(data, EXAMPLE)
    except LockError as exc:
        assert "version" not in data or (raw_cut and "name" not in raw_cut[-1]), exc
        assert str(exc).startswith(str(EXAMPLE)) and "\n" not in str(exc)
        return
    assert lock.requires_python == data.get("requires-python")
    assert len(lock.packages) == len(raw_cut)
    for got, raw in zip(lock.packages, raw_cut):
        assert (got.name, got.version) == (raw["name"], raw.get("version", "0"))
        assert got.registry == raw.get("source", {}).get("registry")
        assert [w.sha256 for w in got.wheels] == [w["hash"].removeprefix("sha256:") for w in raw.get("wheels", [])]
        assert got.has_sdist == isinstance(raw.get("sdist"), dict)

"""Synthetic but real, installable wheels: zip layout, METADATA, WHEEL tags and a correct RECORD."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

# a fixed timestamp makes the same arguments give byte-identical wheels (same sha256)
_DATE = (2020, 1, 1, 0, 0, 0)
_PAYLOAD_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_PAYLOAD_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dist_name(name: str) -> str:
    """The distribution part of a wheel filename (PEP 427 escaping: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", name)


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    """`{dist}-{version}-{tag}.whl`, with a local version's `+` kept as uv and PyPA write it."""
    return f"{dist_name(name)}-{version}-{tag}.whl"


def expand_tags(tag: str) -> list[str]:
    """Every single tag of a compressed tag set (py2.py3-none-any -> py2-none-any, py3-none-any)."""
    py, abi, plat = tag.split("-")
    return [f"{p}-{a}-{pl}" for p in py.split(".") for a in abi.split(".") for pl in plat.split(".")]


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _payload_chunks(size: int, seed_material: str) -> Iterable[bytes]:
    rng = random.Random(seed_material)
    remaining = size
    while remaining > 0:
        n = min(_PAYLOAD_CHUNK, remaining)
        yield rng.randbytes(n)
        remaining -= n


def make_wheel(
    out_dir: Path,
    name: str,
    version: str,
    tag: str = "py3-none-any",
    payload_size: int = 64 * 1024,
    seed: int = 0,
    *,
    requires: Iterable[str] = (),
    requires_python: str | None = None,
    extras: Iterable[str] = (),
) -> Path:
    """Build an installable wheel with a deterministic random payload.bin; return its path.

    `extras` are declared (Provides-Extra); `requires` with an `extra == "..."` marker fill them.

    The payload is seeded by (name, version, tag, seed) and stored uncompressed, so the wheel's
    size tracks payload_size and distinct wheels have distinct bytes. Large payloads stream to
    disk; nothing holds the whole file in memory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = dist_name(name)
    pkg = dist.lower()
    info = f"{dist}-{version}.dist-info"
    path = out_dir / wheel_filename(name, version, tag)
    pure = tag.endswith("-none-any")

    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        "Summary: synthetic wheel for warmd tests",
    ]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Provides-Extra: {e}" for e in extras]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    wheel_meta = [
        "Wheel-Version: 1.0",
        "Generator: warmd-tests (0.1)",
        f"Root-Is-Purelib: {'true' if pure else 'false'}",
    ] + [f"Tag: {t}" for t in expand_tags(tag)]

    small_files = {
        f"{pkg}/__init__.py": f'"""Synthetic {name} {version}."""\n__version__ = "{version}"\n'.encode(),
    }
    records: list[str] = []
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for arc, data in small_files.items():
            _write(zf, arc, data)
            records.append(f"{arc},{_record_hash(data)},{len(data)}")

        h = hashlib.sha256()
        zinfo = zipfile.ZipInfo(f"{pkg}/payload.bin", date_time=_DATE)
        zinfo.compress_type = zipfile.ZIP_STORED
        zinfo.external_attr = 0o644 << 16
        with zf.open(zinfo, "w", force_zip64=payload_size >= 2**31) as dst:
            for chunk in _payload_chunks(payload_size, f"{name}|{version}|{tag}|{seed}"):
                h.update(chunk)
                dst.write(chunk)
        digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        records.append(f"{pkg}/payload.bin,sha256={digest},{payload_size}")

        for arc, text in ((f"{info}/METADATA", metadata), (f"{info}/WHEEL", wheel_meta)):
            data = ("\n".join(text) + "\n").encode()
            _write(zf, arc, data)
            records.append(f"{arc},{_record_hash(data)},{len(data)}")
        records.append(f"{info}/RECORD,,")
        _write(zf, f"{info}/RECORD", ("\n".join(records) + "\n").encode())
    tmp.replace(path)
    return path


def _write(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    zinfo = zipfile.ZipInfo(arcname, date_time=_DATE)
    zinfo.compress_type = zipfile.ZIP_STORED
    zinfo.external_attr = 0o644 << 16
    zf.writestr(zinfo, data)


# Wheel variants (PEP 825, draft): the schema uv 0.13.9 reads, and its vendored NVIDIA provider,
# which needs no plugin from an index (uv runs it itself; NV_VARIANT_PROVIDER_FORCE_* drive it).
VARIANT_SCHEMA = "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"
NVIDIA_PROVIDER = {"nvidia": {"requires": ["nvidia-variant-provider"],
                              "plugin-api": "nvidia_variant_provider.plugin:NvidiaVariantPlugin"}}


def variants_doc(variants: dict[str, dict]) -> dict:
    """A release's variant metadata: `variants` maps each label to its properties (namespace ->
    feature -> values), NVIDIA's provider decides among them."""
    return {"$schema": VARIANT_SCHEMA, "default-priorities": {"namespace": ["nvidia"]},
            "providers": NVIDIA_PROVIDER, "variants": variants}


def variants_json(out_dir: Path, name: str, version: str, variants: dict[str, dict]) -> Path:
    """Write the release's index-level `{name}-{version}-variants.json` into out_dir; return its path."""
    path = Path(out_dir) / f"{dist_name(name).lower()}-{version}-variants.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(variants_doc(variants)))
    return path


def variant_wheel(wheel: Path, label: str, properties: dict, out_dir: Path) -> Path:
    """A variant-labelled copy of `wheel` in out_dir: `{stem}-{label}.whl`, its dist-info holding the
    `variant.json` of that one variant (in RECORD too); the rest byte for byte as `wheel` has it."""
    wheel = Path(wheel)
    out = Path(out_dir) / f"{wheel.name[:-len('.whl')]}-{label}.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(variants_doc({label: properties})).encode()
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                arc = item.filename.rsplit("/", 1)[0] + "/variant.json"
                _write(zout, arc, doc)
                data = data.replace(item.filename.encode() + b",,",
                                    f"{arc},{_record_hash(doc)},{len(doc)}\n{item.filename},,".encode())
            _write(zout, item.filename, data)
    return out

"""Stand-ins for what cannot run here (a GPU driver's tools, NetworkManager on a system bus, a
laptop's power supply): recorded outputs answered by argv, and sysfs-like trees written from text."""

from __future__ import annotations

from pathlib import Path


class FakeTools:
    """Answers commands from fixture files and records which commands were asked for."""

    def __init__(self, **outputs: str) -> None:
        self.outputs = {k.replace("_", "-") if k == "nvidia_smi" else k: v for k, v in outputs.items()}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str | None:
        self.calls.append(argv)
        return self.outputs.get(argv[0])


def fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write `files` (path relative to the root -> text) under tmp_path, a machine's `/` for the code under test."""
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path

"""The benchmark's own core: what it measures of a command, the order it runs sides in, the doc it writes.
(Speed itself is measured in bench/, never here.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import alternate, compile_bytecode, measure
from bench.table import BEGIN, END, write_doc

REPO = Path(__file__).resolve().parent.parent

MiB = 2**20
_CHILD_ALLOCATES = (
    "import subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', 'b = bytearray(96 * 2**20); sum(b[::4096])'], check=True)\n"
)


def test_measure_counts_the_memory_and_cpu_of_a_grandchild() -> None:
    m = measure([sys.executable, "-c", _CHILD_ALLOCATES], env=dict(os.environ))
    assert m.returncode == 0
    # the 96 MiB live in the grandchild: only a rusage covering waited-for descendants sees them
    assert m.max_rss_kib >= 96 * 1024
    assert m.own_rss_kib < 96 * 1024  # the command's own process only waited
    assert m.cpu > 0 and m.user >= 0 and m.sys >= 0


def test_measure_tells_the_command_s_own_cpu_from_its_children_s() -> None:
    burn = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'sum(range(30_000_000))'], check=True)\n"
    m = measure([sys.executable, "-c", burn], env=dict(os.environ))
    assert m.cpu > 0 and 0 < m.own_cpu < m.cpu / 2  # the parent only waited; the child did the work


def test_measure_of_one_command_does_not_carry_an_earlier_peak() -> None:
    # From a parent as small as the bench's: a child's peak RSS starts at its parent's when it forks,
    # and this pytest process may have grown past 96 MiB over a whole run.
    code = ("import os, sys\nfrom bench.core import measure\n"
            f"measure([sys.executable, '-c', {_CHILD_ALLOCATES!r}], env=dict(os.environ))\n"
            "print(measure([sys.executable, '-c', 'pass'], env=dict(os.environ)).max_rss_kib)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 96 * 1024  # getrusage(RUSAGE_CHILDREN) of that process would say ≥ 96 MiB


def test_measure_reports_a_failure_with_its_stderr() -> None:
    with pytest.raises(RuntimeError, match="exited 3: boom"):
        measure([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], env=dict(os.environ))
    m = measure([sys.executable, "-c", "print('out')"], env=dict(os.environ), check=False)
    assert (m.returncode, m.stdout) == (0, "out\n")


def test_sides_alternate_round_by_round() -> None:
    seen: list[str] = []
    got = alternate(3, {"uv": lambda i: seen.append(f"uv{i}") or i, "warmd": lambda i: seen.append(f"warmd{i}") or -i})
    assert seen == ["uv0", "warmd0", "uv1", "warmd1", "uv2", "warmd2"]
    assert got == {"uv": [0, 1, 2], "warmd": [0, -1, -2]}


def test_write_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Title\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Reading\nkept\n")
    write_doc(doc, f"{BEGIN}\nnew table\n{END}\n")
    assert doc.read_text() == f"# Title\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## Reading\nkept\n"


def test_the_bench_runs_warmd_from_compiled_bytecode_as_an_installed_one_would() -> None:
    import importlib.util

    import warmd

    compile_bytecode()
    sources = sorted(Path(warmd.__file__).parent.rglob("*.py"))
    assert sources and all(Path(importlib.util.cache_from_source(str(src))).is_file() for src in sources)

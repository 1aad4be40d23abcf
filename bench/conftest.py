"""Shared benchmark fixtures: a session temp dir, a persistent cache dir for large generated
inputs, a C compiler helper, and a summary table printed at the end of the run."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_SUMMARIES = []


@pytest.fixture(scope="session")
def bench_tmp(tmp_path_factory):
    """A temporary directory for the whole benchmark session (compiled helpers, small files)."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def bench_cache():
    """A directory kept across runs for large generated inputs (IPVSFLOW_BENCH_CACHE, default
    <tmp>/ipvsflow-bench-cache): generating a multi-GB capture once is enough."""
    d = Path(os.environ.get("IPVSFLOW_BENCH_CACHE", Path(tempfile.gettempdir()) / "ipvsflow-bench-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def compile_c(bench_tmp):
    """compile_c(source, shared=True, defines=()) -> path of the built library / program,
    compiled with ``cc -O2`` into the session temp dir."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) for the C baselines")

    def build(source, shared=True, defines=()):
        source = Path(source)
        out = bench_tmp / (source.stem + (".so" if shared else ""))
        cmd = [cc, "-O2", "-o", str(out), str(source)] + [f"-D{d}" for d in defines]
        if shared:
            cmd[1:1] = ["-shared", "-fPIC"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
        return out

    return build


@pytest.fixture(scope="session")
def bench_summary():
    """bench_summary(title, lines): print a table after pytest-benchmark's own."""
    def add(title, lines):
        _SUMMARIES.append((title, list(lines)))
    return add


def pytest_terminal_summary(terminalreporter):
    for title, lines in _SUMMARIES:
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collect_file(file_path, parent):
    """Collect bench/bench_*.py when pytest is pointed at the directory (`pytest bench/`):
    the project's python_files pattern only covers the tests' test_*.py."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and file_path.parent == Path(__file__).parent and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None

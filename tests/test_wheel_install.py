"""The wheel works outside the checkout: built from the source tree, installed (without its
dependencies, which come from this environment) into a fresh virtualenv in a temporary folder,
its ``lifelong`` command lists the reproduction rows (package data) and runs the demo."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "lifelong" / "reproduce_rows"
NOT_BUILT_FROM = (
    ".git",
    ".venv",
    "build",
    "dist",
    "runs",
    "*.egg-info",
    "__pycache__",
    ".*cache",
    ".hypothesis",
)


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with one OpenMP thread and no ``PYTHONPATH``; fail with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the source tree (an in-tree build would leave ``build/`` and
    stale modules in the checkout)."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT_FROM))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", wheels, source, cwd=tmp_path)  # fmt: skip
    [wheel] = wheels.glob("lifelong-*.whl")
    return wheel


def venv_with(wheel: Path, venv: Path, cwd: Path) -> Path:
    """A fresh virtualenv holding ``wheel``, that sees this environment's packages through a
    ``.pth`` file (the ``.pth`` files of those folders, the editable install among them, are
    not processed). Returns its Python."""
    run(sys.executable, "-m", "venv", venv, cwd=cwd)
    python = venv / "bin" / "python"
    # installed before this environment is visible: pip finds no lifelong to replace
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
        wheel, cwd=cwd)  # fmt: skip
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=cwd)
    ours = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    paths = list(dict.fromkeys(p for p in ours if Path(p).is_dir()))
    (Path(purelib.stdout.strip()) / "outer-environment.pth").write_text("\n".join(paths) + "\n")
    return python


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    rows = sorted(p.stem for p in ROWS.glob("*.yaml"))
    assert len(rows) >= 20
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert all(f"lifelong/reproduce_rows/{row}.yaml" in names for row in rows)
    assert any(n.startswith("lifelong/store/static/") for n in names)  # the other package data

    cwd, venv = tmp_path / "cwd", tmp_path / "venv"
    cwd.mkdir()
    python = venv_with(wheel, venv, cwd)
    where = run(python, "-c", "import lifelong, torch; print(lifelong.__file__)", cwd=cwd)
    package = Path(where.stdout.strip()).resolve()
    assert package.is_relative_to(venv.resolve()), package  # not the editable checkout
    assert not package.is_relative_to(ROOT)
    provenance = (
        "from lifelong.reproduce import git_commit, row_names; print(git_commit(), row_names())"
    )
    assert run(python, "-c", provenance, cwd=cwd).stdout == f"(None, None) {rows}\n"

    listed = run(venv / "bin" / "lifelong", "reproduce", "--list", cwd=cwd).stdout
    assert [line.split()[0] for line in listed.splitlines()] == rows

    out = tmp_path / "demo"
    run(venv / "bin" / "lifelong", "demo", "--minutes", "1", "--episodes", "20", "--out", out,
        cwd=cwd, timeout=420)  # fmt: skip
    assert (out / "demo.json").is_file()

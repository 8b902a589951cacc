"""The command line, end to end on tiny strokes runs: train, resume, evaluate, predict, and
one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import lifelong.cli
import lifelong.demo
from lifelong.cli import main
from lifelong.data.strokes import load_strokes
from lifelong.pipeline.checkpoint import load_checkpoint

SMALL = {"train": 20, "val": 8, "test": 8}
TINY_RUN = [
    "--algorithm", "protonet", "--dataset", "strokes",
    "--dataset-option", "classes={train: 20, val: 8, test: 8}", "--dataset-option", "per_class=6",
    "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "2", "--hidden", "8",
    "--val-every", "2", "--val-episodes", "4", "--checkpoint-every", "2", "--quiet",
]  # fmt: skip


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``lifelong ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def files_of(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (files or folders) with its bytes."""
    paths = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {str(p): p.read_bytes() for p in paths if p.is_file()}


def refused(
    capsys: pytest.CaptureFixture[str],
    args: list[str | Path],
    code: int,
    message: str,
    watched: tuple[Path, ...] = (),
) -> str:
    """Run ``lifelong ARGS``, which must exit with ``code``, print nothing on stdout and one
    line ``error: ...`` with ``message`` (no traceback) on stderr, and leave every file under
    ``watched`` as it was (none made, changed or removed); returns that line."""
    before = files_of(*watched)
    got, out, err = cli(capsys, *args)
    assert (got, out) == (code, ""), (args, got, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, (args, err)
    assert files_of(*watched) == before, args
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY_RUN, "--iterations", "4", "--out", str(out)])
    assert exit_.value.code == 0
    return out


def test_train_writes_a_complete_run(run_dir):
    config = (run_dir / "config.yaml").read_text()
    assert 'algorithm: "protonet"  # from: flag' in config and "ways: 3  # from: flag" in config
    assert load_checkpoint(run_dir, "last")["step"] == 4
    assert load_checkpoint(run_dir, "best")["step"] in (2, 4)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,split,loss,metric,ci95,grad_norm,lr,seconds" and len(rows) == 1 + 4 + 2


def test_flags_override_the_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("ways: 4\nshots: 2\niterations: 1\nseed: 7\n")
    code, out, _ = cli(capsys, "train", *TINY_RUN, "--config", config, "--ways", "2", "--out",
                       tmp_path / "r")  # fmt: skip
    assert code == 0 and "trained 1 iterations" in out
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "ways: 2" in saved and "shots: 1" in saved and "seed: 7" in saved


def test_resume_reaches_the_parameters_of_an_uninterrupted_run(run_dir, tmp_path, capsys):
    assert cli(capsys, "train", *TINY_RUN, "--iterations", "2", "--out", tmp_path / "r")[0] == 0
    code, out, _ = cli(capsys, "train", "--resume", "--iterations", "4", "--quiet", "--out",
                       tmp_path / "r")  # fmt: skip
    assert code == 0 and "trained 4 iterations" in out
    resumed = load_checkpoint(tmp_path / "r", "last")["algorithm"]
    straight = load_checkpoint(run_dir, "last")["algorithm"]
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():  # parameters and batch-norm running statistics
        assert torch.equal(resumed[name], tensor), name


def test_evaluate_prints_json(run_dir, capsys):
    code, out, _ = cli(capsys, "evaluate", run_dir, "--episodes", "12", "--ways", "2", "--json")
    result = json.loads(out)
    assert code == 0
    assert {k: result[k] for k in ("metric", "episodes", "ways", "shots", "queries", "split")} == {
        "metric": "accuracy", "episodes": 12, "ways": 2, "shots": 1, "queries": 2, "split": "test"
    }  # fmt: skip
    assert 0 <= result["mean"] <= 1 and result["ci95"] >= 0
    code, out, _ = cli(capsys, "evaluate", run_dir, "--episodes", "12", "--ways", "2")
    assert out.startswith("accuracy ") and "12 episodes" in out


def write_pngs(folder: Path, images: torch.Tensor) -> list[Path]:
    """Save ``uint8 [n, 1, H, W]`` images as black-on-white PNGs, like scanned drawings."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        Image.fromarray(255 - image[0].numpy()).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def strokes_test():
    return load_strokes(SMALL, per_class=6)["test"]


def test_predict_classifies_query_images(run_dir, strokes_test, tmp_path, capsys):
    for k in range(3):
        write_pngs(tmp_path / "support" / f"class{k}", strokes_test[k][:1])
    queries = [write_pngs(tmp_path / f"query{k}", strokes_test[k][1:3]) for k in range(3)]
    args = ["predict", run_dir, "--support", tmp_path / "support"]
    code, out, _ = cli(capsys, *args, "--json", "--query", queries[0][0], tmp_path / "query1")
    result = json.loads(out)
    assert code == 0 and result["classes"] == ["class0", "class1", "class2"]
    assert [p["path"] for p in result["predictions"]] == [str(queries[0][0])] + [
        str(p) for p in queries[1]
    ]
    for p in result["predictions"]:
        assert p["label"] in result["classes"]
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = cli(capsys, *args, "--query", queries[2][0])
    assert (
        code == 0 and out.split()[0] == str(queries[2][0]) and out.split()[1] in result["classes"]
    )


@pytest.fixture
def bad_inputs(run_dir, tmp_path, strokes_test):
    """Arguments of bad invocations with the exit code and message each must give."""
    write_pngs(tmp_path / "support" / "a", strokes_test[0][:1])
    (tmp_path / "support" / "empty").mkdir()
    write_pngs(tmp_path / "ok" / "a", strokes_test[0][:1])
    write_pngs(tmp_path / "ok" / "b", strokes_test[1][:1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    (tmp_path / "unknown.yaml").write_text("wayz: 5\n")
    (tmp_path / "norun").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "last.json").write_text("{ not json")
    out = ["--out", tmp_path / "new"]
    return [
        (["train", "--algorithm", "mamll", *out], 1,
         "--algorithm: unknown algorithm 'mamll' (did you mean 'maml'?); choose one of maml"),
        (["train", "-a", "protonet", "-d", "sinusoid", *out], 1, "protonet solves classification"),
        (["train", "-a", "maml", "-d", "sinusoid", *out], 1, "backbone conv4 needs images"),
        (["train", "-a", "protonet", "-d", "nosuchdata", *out], 1, "unknown dataset 'nosuchdata'"),
        (["train", *TINY_RUN, "--test-ways", "9", *out], 1, "--test-ways 9 is more than the 8"),
        (["train", *TINY_RUN, "--ways", "x", *out], 2, "Invalid value for '--ways'"),
        (["train", *TINY_RUN, "--image-size", "8", *out], 1, "conv4 cannot take 1x8x8 images"),
        (["train", "--config", tmp_path / "unknown.yaml", *out], 1, "unknown option 'wayz'"),
        (["train", *TINY_RUN, "--out", run_dir], 1, "already holds a run: pass --resume"),
        (["train", "--resume", "--ways", "5", "--out", run_dir], 1, "cannot resume with ways=5"),
        (["evaluate", tmp_path / "missing"], 1, "does not exist"),
        (["evaluate", tmp_path / "norun"], 1, "is not a lifelong run folder"),
        (["evaluate", tmp_path / "garbage"], 1, "is unreadable"),
        (["evaluate", run_dir, "--ways", "9"], 1, "--test-ways 9 is more than the 8 classes"),
        (["predict", run_dir, "--support", tmp_path / "support", "--query", broken], 1,
         "has no images"),
        (["predict", run_dir, "--support", tmp_path / "ok", "--query", broken], 1,
         "cannot decode image"),
        (["predict", run_dir, "--support", tmp_path / "ok", "--query", tmp_path / "nothing.png"],
         1, "does not exist"),
        (["predict", run_dir, "--support", tmp_path / "ok"], 1, "needs --support DIR and at least"),
        (["download", "strokes"], 1, "strokes cannot be downloaded"),
    ]  # fmt: skip


def test_bad_input_is_one_line_without_traceback(bad_inputs, capsys):
    for args, expected_code, message in bad_inputs:
        code, out, err = cli(capsys, *args)
        assert (code, out) == (expected_code, ""), args
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, (args, err)


def test_datasets_lists_the_registry(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path))
    code, out, _ = cli(capsys, "datasets")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and {"omniglot", "strokes", "sinusoid", "miniimagenet"} <= set(names)
    assert "downloadable" in next(line for line in out.splitlines() if line.startswith("omniglot"))


def test_python_dash_m_runs_the_same_cli():
    command = [sys.executable, "-m", "lifelong", "evaluate", "/nonexistent/run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "error: run folder '/nonexistent/run' does not exist\n"


@pytest.mark.slow
def test_demo_writes_a_table_and_a_plot(tmp_path, capsys, monkeypatch):
    small = {"dataset_options": {"classes": {"train": 40, "val": 10, "test": 10}, "per_class": 20}}
    runs = [r._replace(options={**r.options, **small}) if r.options["dataset"] == "strokes" else r
            for r in lifelong.demo.DEMO_RUNS]  # fmt: skip
    monkeypatch.setattr(lifelong.demo, "DEMO_RUNS", tuple(runs))  # fewer classes to generate
    monkeypatch.setattr(lifelong.demo, "STREAM_CLASSES", 6)
    monkeypatch.setattr(lifelong.demo, "STREAM_SEEDS", 2)
    code, out, _ = cli(capsys, "demo", "--minutes", "0.15", "--episodes", "20", "--out", tmp_path)
    assert code == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    rows = [r for r in summary if "metric" in r]
    streams = {r["method"]: r["stream"] for r in summary if "stream" in r}
    assert [r["metric"] for r in rows] == ["accuracy", "accuracy", "accuracy", "mse"]
    assert len(streams) == 2 and all(
        s["classes"] == 6 and s["seeds"] == 2 for s in streams.values()
    )
    assert "6 classes one by one" in out
    assert all(r["episodes"] == 20 and r["ci95"] is not None for r in rows)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "ProtoNet" in out and "MAML" in out and "± " in out

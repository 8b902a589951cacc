"""Bad-input catalogue, runs: damaged or hostile checkpoints, bad evaluate/predict/stream/resume
options, each refused with one line and the run folder unchanged; and SIGTERM or Ctrl-C during
`lifelong train`, which checkpoints the step it ends and says how to resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from test_cli import TINY_RUN, cli, refused, write_pngs
from test_store import CLASSES, trained_run

from lifelong.cli import main
from lifelong.data.strokes import load_strokes
from lifelong.pipeline.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture
def copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run that a case may damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.fixture(scope="module")
def support(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A support folder of 3 classes of 2 images each, and ``query.png``."""
    folder = tmp_path_factory.mktemp("support")
    test = load_strokes(CLASSES, per_class=6)["test"]
    for k in range(3):
        write_pngs(folder / "support" / f"class{k}", test[k][:2])
    shutil.copy(folder / "support" / "class0" / "0.png", folder / "query.png")
    return folder


def tamper(
    run: Path, change: Callable[[dict, dict], None], tags: tuple[str, ...] = ("best", "last")
):
    """Change checkpoint JSON and tensors in place (``change(meta, tensors)``), with the
    tensor file's hash recomputed, as someone who edits a run's files would."""
    for tag in tags:
        meta = json.loads((run / f"{tag}.json").read_text())
        weights = run / meta["tensors"]
        tensors = load(weights.read_bytes())
        change(meta, tensors)
        data = save(tensors)
        weights.write_bytes(data)
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        (run / f"{tag}.json").write_text(json.dumps(meta))


def first_weight(tensors: dict) -> str:
    return next(
        k for k, t in tensors.items() if k.startswith("/algorithm/") and t.dtype.is_floating_point
    )


def without(index: Path, key: str) -> None:
    meta = json.loads(index.read_text())
    del meta[key]
    index.write_text(json.dumps(meta))


def edit(key: str, value: object) -> Callable[[dict, dict], None]:
    def change(meta: dict, tensors: dict) -> None:
        meta["state"][key] = value

    return change


def drop(key: str) -> Callable[[dict, dict], None]:
    return lambda meta, tensors: meta.pop(key)


CHECKPOINTS = [
    (drop("tensors"), "is incomplete (no tensors)"),
    (drop("state"), "is incomplete (no state)"),
    (lambda m, t: m["state"]["algorithm"].update(x={"__tensor__": "/nope"}), "'/nope'"),
    (lambda m, t: t.pop(first_weight(t)), "does not match its tensors"),
    (lambda m, t: t.update({first_weight(t): torch.zeros(3)}), "does not fit the model"),
    (lambda m, t: t[first_weight(t)].fill_(float("nan")), "holds weights that are NaN"),
    (lambda m, t: t[first_weight(t)].fill_(float("inf")), "holds weights that are NaN or inf"),
    (lambda m, t: m.update(format="other/9"), "is not a lifelong-checkpoint/1 checkpoint"),
    (lambda m, t: m.update(tensors=7), "is incomplete (no tensors)"),
    (edit("config", {"wayz": 5}), "unknown option 'wayz'"),
    (edit("config", "protonet"), "cannot read"),
    (edit("facts", None), "cannot read"),
    (edit("step", "x"), "cannot read"),
    (edit("algorithm", 5), "does not fit the model its config builds"),
    (lambda m, t: m["state"].pop("config"), "cannot read ('config')"),
    (lambda m, t: m["state"].update(algorithm={"__items__": 5}), "does not match its tensors"),
]
"""Checkpoints edited (hash recomputed) that ``evaluate`` must refuse."""


@pytest.mark.parametrize(("change", "message"), CHECKPOINTS)
def test_damaged_checkpoints(change, message, copy, capsys):
    tamper(copy, change)
    refused(capsys, ["evaluate", copy, "--episodes", "2"], 1, message, (copy,))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: (run / "best.json").write_text("{ not json"), "is unreadable"),
        (lambda run: (run / "best.json").write_text("[1, 2]"), "is not a lifelong-checkpoint/1"),
        (lambda run: without(run / "best.json", "sha256"), "is incomplete (no sha256)"),
        (lambda run: (run / "best.json").write_bytes(b"\xff\xfe"), "is unreadable"),
        (lambda run: next(run.glob("best.*.safetensors")).unlink(), "missing"),
        (lambda run: next(run.glob("best.*.safetensors")).write_bytes(b"x"), "(hash mismatch)"),
        (lambda run: (run / "best.json").unlink() or (run / "last.json").unlink(), "no last.json"),
    ],
)
def test_damaged_checkpoint_files(damage, message, copy, capsys):
    damage(copy)
    refused(capsys, ["evaluate", copy, "--episodes", "2"], 1, message, (copy,))


def test_tensors_that_are_not_safetensors_with_a_matching_hash(copy, capsys):
    meta = json.loads((copy / "best.json").read_text())
    (copy / meta["tensors"]).write_bytes(b"garbage" * 10)
    meta["sha256"] = hashlib.sha256(b"garbage" * 10).hexdigest()
    (copy / "best.json").write_text(json.dumps(meta))
    refused(capsys, ["evaluate", copy], 1, "does not match its tensors", (copy,))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, t: t.update({first_weight(t): torch.zeros(3)}), "does not fit its run"),
        (
            lambda m, t: t.update({k: torch.zeros(2) for k in t if "exp_avg" in k}),
            "optimizer exp_avg",
        ),
        (lambda m, t: m["state"].pop("rng"), "does not fit its run (KeyError: 'rng')"),
        (lambda m, t: m["state"].update(optimizer=[]), "does not fit its run"),
        (drop("tensors"), "is incomplete (no tensors)"),
        (
            lambda m, t: t[first_weight(t)].fill_(float("nan")),
            "holds weights or optimizer moments that are NaN or infinite: it cannot be resumed",
        ),
        (
            lambda m, t: [v.fill_(float("inf")) for k, v in t.items() if "exp_avg" in k],
            "holds weights or optimizer moments that are NaN or infinite",
        ),
    ],
)
def test_damaged_checkpoints_cannot_be_resumed(change, message, copy, capsys):
    tamper(copy, change, tags=("last",))
    args = ["train", "--resume", "--iterations", "12", "--quiet", "--out", copy]
    refused(capsys, args, 1, message, (copy,))


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's settings with MAML, 2 iterations (a best and a last checkpoint)."""
    out = tmp_path_factory.mktemp("maml") / "run"
    flags = ["maml" if a == "protonet" else a for a in TINY_RUN]
    with pytest.raises(SystemExit) as exit_:
        main(["train", *flags, "--iterations", "2", "--out", str(out)])
    assert exit_.value.code == 0
    return out


MAML = "/algorithm/step_weights"
"""The buffer of MAML's multi-step loss weights, which ProtoNet has not."""

MAML_CHECKPOINTS = [
    (lambda m, t: t.pop(MAML), "does not match its tensors 'TAG.00000002.safetensors' (KeyError"),
    (
        lambda m, t: m["state"]["algorithm"].pop("step_weights"),
        'for MAML: Missing key(s) in state_dict: "step_weights"',
    ),
    (
        lambda m, t: t.update({"/algorithm/model.head.weight": torch.zeros(2, 2)}),
        "for MAML: size mismatch for model.head.weight",
    ),
    (lambda m, t: t.update({MAML: torch.zeros(7)}), "size mismatch for step_weights"),
    (lambda m, t: t[MAML].fill_(float("nan")), "NaN or inf"),
]
"""MAML checkpoints edited with the tensor file's hash recomputed (issue 13: a KeyError
traceback), for ``evaluate`` (``TAG``: best) and for ``train --resume`` (last)."""


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize(("change", "message"), MAML_CHECKPOINTS)
def test_damaged_maml_checkpoints(change, message, command, maml_run, tmp_path, capsys):
    copy = Path(shutil.copytree(maml_run, tmp_path / "run"))
    tag = {"evaluate": "best", "resume": "last"}[command]
    tamper(copy, change, tags=(tag,))
    args = {
        "evaluate": ["evaluate", copy, "--episodes", "2", "--checkpoint", "best"],
        "resume": ["train", "--resume", "--iterations", "4", "--quiet", "--out", copy],
    }[command]
    refused(capsys, args, 1, message.replace("TAG", tag), (copy,))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--episodes", "0"], "episodes must be positive, got 0"),
        (["--episodes", "-1"], "episodes must be positive, got -1"),
        (["--ways", "1"], "--test-ways 1: a classification task needs at least 2 classes"),
        (["--ways", "0"], "--test-ways must be positive, got 0"),
        (["--shots", "0"], "--test-shots must be positive"),
        (["--queries", "-2"], "--test-queries must be positive"),
        (["--ways", "9"], "--test-ways 9 is more than the 8 classes"),
        (["--shots", "6"], "6 shots + 2 queries = 8 images per class"),
        (["--inner-steps", "0"], "--eval-inner-steps must be positive"),
        (["--split", "nope"], "has no split 'nope'"),
        (["--device", "tpu"], "--device must be one of"),
        (["--checkpoint", "pn"], "the checkpoint must be best or last, got 'pn'"),
        (["--checkpoint", "worst"], "the checkpoint must be best or last"),
    ],
)
def test_bad_evaluate_options(flags, message, run_dir, capsys):
    refused(capsys, ["evaluate", run_dir, *flags], 1, message, (run_dir,))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "missing"], "run folder 'missing' does not exist"),
        (["evaluate", "notes.txt"], "'notes.txt' is a file, not a run folder"),
        (["evaluate", "empty"], "'empty' is not a lifelong run folder (no last.json)"),
        (["predict", "missing", "--support", "s", "--query", "q.png"], "does not exist"),
        (["train", "--resume", "--out", "empty"], "nothing to resume: 'empty' has no config.yaml"),
        (["stream", "missing"], "does not exist"),
    ],
)
def test_what_is_not_a_run(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    refused(capsys, args, 1, message, (tmp_path,))


def test_resume_refusals(copy, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("ways: 3\n")
    resume = ["train", "--resume", "--quiet", "--out", copy]
    refused(capsys, [*resume, "--config", tmp_path / "c.yaml"], 1, "leave out --config", (copy,))
    refused(capsys, [*resume, "--ways", "4"], 1, "cannot resume with ways=4", (copy,))
    refused(capsys, ["train", *TINY_RUN, "--out", copy], 1, "already holds a run", (copy,))
    (copy / "last.json").unlink()
    refused(capsys, resume, 1, "nothing to resume", (copy,))
    (copy / "config.yaml").write_text("ways: [1\n")
    refused(capsys, resume, 1, "is not valid YAML", (copy,))


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--support", "support/class0/0.png"], 1, "is a file: give a folder with one sub-folder"),
        (["--support", "support/class0"], 1, "has no class sub-folders"),
        (["--support", "one"], 1, "the support set has one class ('a'): give examples of at least"),
        (["--support", "hollow"], 1, "class folder 'hollow/b' has no images"),
        (["--support", "nothing"], 1, "support folder 'nothing' does not exist"),
        (["--support", "support", "--checkpoint", "worst"], 1, "must be best or last"),
        (["--support", "support", "--classifier", "nope"], 1, "unknown classifier 'nope'"),
        (["--support", "support", "--classifier-option", "x"], 1, "takes KEY=NUMBER"),
        (["--support", "support", "--classifier-option", "shrinkage=nan"], 2, "must be finite"),
        (
            ["--support", "support", "--classifier", "slda", "--classifier-option", "a=1"],
            1,
            "classifier 'slda' has no option a",
        ),
        (["--support", "support", "--device", "tpu"], 1, "--device must be one of auto, cpu"),
    ],
)
def test_bad_support_sets(flags, code, message, run_dir, support, capsys, monkeypatch):
    monkeypatch.chdir(support)
    (support / "one" / "a").mkdir(parents=True, exist_ok=True)
    shutil.copy(support / "query.png", support / "one" / "a" / "0.png")
    (support / "hollow" / "a").mkdir(parents=True, exist_ok=True)
    (support / "hollow" / "b").mkdir(exist_ok=True)
    shutil.copy(support / "query.png", support / "hollow" / "a" / "0.png")
    args = ["predict", run_dir, *flags, "--query", "query.png"]
    refused(capsys, args, code, message, (run_dir, support))


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--classes", "0"], 2, "Invalid value for '--classes'"),
        (["--seeds", "0"], 2, "Invalid value for '--seeds'"),
        (["--replay-batch", "0"], 2, "Invalid value for '--replay-batch'"),
        (["--lr", "nan", "--learner", "online-sgd"], 2, "must be a positive number, got nan"),
        (["--lr", "-1"], 2, "must be a positive number, got -1.0"),
        (["--classifier-option", "shrinkage=inf"], 2, "the number must be finite"),
        (["--protocol", "nope"], 1, "unknown protocol 'nope'"),
        (["--learner", "nope"], 1, "unknown learner 'nope'"),
        (["--classifier", "nope"], 1, "unknown classifier 'nope'"),
        (["--protocol", "task-sequence", "--classes", "6"], 1, "a multiple of 5 classes, got 6"),
    ],
)
def test_bad_stream_options(flags, code, message, run_dir, capsys):
    refused(capsys, ["stream", run_dir, *flags], code, message, (run_dir,))


TRAIN = [
    sys.executable, "-m", "lifelong", "train", *TINY_RUN, "--val-every", "1000",
    "--checkpoint-every", "1000", "--iterations", "100000",
]  # fmt: skip


def stop_signals_at_their_defaults() -> None:
    """In the child: SIGINT and SIGTERM act as they do from a terminal. A suite started in the
    background (``&``, nohup) hands SIGINT on ignored, and training rightly keeps it ignored."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_checkpoints_the_step_and_says_how_to_resume(
    signum, tmp_path, capsys
):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    training = subprocess.Popen(
        [*TRAIN, "--out", str(run)], stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=stop_signals_at_their_defaults,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and training.poll() is None:
            metrics = run / "metrics.csv"
            if metrics.exists() and metrics.read_text().count(",train,") >= 3:
                break
            time.sleep(0.05)
        training.send_signal(signum)
        _, err = training.communicate(timeout=120)
    finally:
        training.kill()  # no training left behind by a failure
    steps = (run / "metrics.csv").read_text().count(",train,")
    assert training.returncode == 128 + signum, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err == (
        f"error: {signal.Signals(signum).name} stopped training at iteration {steps}; the "
        f"checkpoint is in {run}: continue with `lifelong train --out {run} --resume`\n"
    )
    assert 3 <= steps == load_checkpoint(run, "last")["step"] < 100000
    code, out, _ = cli(capsys, "train", "--resume", "--iterations", steps + 2, "--quiet",
                       "--out", run)  # fmt: skip
    assert code == 0 and f"trained {steps + 2} iterations" in out
    assert load_checkpoint(run, "last")["step"] == steps + 2

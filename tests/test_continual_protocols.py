"""Protocols end to end: the runner, result summaries, plots, and `lifelong stream` on run
folders (a ProtoNet run on strokes; an OML sinusoid run), with its one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from test_continual_learners import clusters, protonet
from typer.testing import CliRunner

from lifelong.continual.cli import stream_command
from lifelong.continual.plots import plot_results
from lifelong.continual.protocols import (
    StreamResult,
    report_points,
    run_protocol,
    run_seeds,
    run_stream,
)
from lifelong.continual.registry import LearnerSettings, make_learner
from lifelong.continual.streams import ClassStream, SineStream, task_sequence


def test_report_points():
    stream = ClassStream(clusters(12), classes=12, seed=0)
    assert report_points(stream, (10, 50)) == [10, 12]
    assert report_points(stream, None) == list(range(1, 13))
    paired = ClassStream(clusters(12), classes=12, classes_per_step=4, seed=0)
    assert report_points(paired, (5, 8)) == [8, 12]  # only step boundaries


def test_run_stream_reports_all_seen_classes():
    stream = ClassStream(clusters(12), classes=12, seed=0)
    result = run_stream(make_learner("prototypes", protonet(), 12), stream, (4, 8))
    assert result.boundaries == [4, 8, 12]
    assert result.per_class.shape == (3, 12)
    seen = ~torch.isnan(result.per_class)
    assert seen.sum(1).tolist() == [4, 8, 12]
    assert seen[0, :4].all()  # labels in order of arrival


def test_task_aware_evaluation_is_easier():
    """Task-aware scoring chooses among a task's classes only: never worse than choosing
    among all classes seen."""
    net = protonet()
    aware = task_sequence(clusters(20, seed=3), tasks=4, ways=5, shots=1, queries=5, seed=0)
    blind = ClassStream(clusters(20, seed=3), 20, 5, 1, 5, seed=0)
    a = run_stream(
        make_learner("online-finetune", net, 20, settings=LearnerSettings(lr=0.2)), aware
    )
    b = run_stream(
        make_learner("online-finetune", net, 20, settings=LearnerSettings(lr=0.2)), blind
    )
    assert (a.per_class.nan_to_num(-1) >= b.per_class.nan_to_num(-1)).all()
    assert float(a.per_class[-1].mean()) > float(b.per_class[-1].mean())


def toy_result(learner: str = "prototypes", seeds=(0, 1, 2)) -> StreamResult:
    net = protonet()

    def make(seed):
        stream = ClassStream(clusters(10, seed=seed), 10, 2, 15, 5, seed=seed)
        settings = LearnerSettings(lr=0.2)
        return make_learner(learner, net, stream.num_classes, seed, settings), stream

    return StreamResult("toy", learner, "accuracy", list(seeds), run_seeds(make, seeds))


def test_summary_and_table():
    result = toy_result("online-finetune")
    s = result.summary()
    assert s["classes"] == 10 and s["seeds"] == 3
    assert list(s["accuracy_by_classes"]) == ["2", "4", "6", "8", "10"]
    curves = result.curves()
    assert s["accuracy_by_classes"]["10"] == pytest.approx(float(curves[:, -1].mean()), abs=1e-6)
    spread = float(curves[:, -1].std())
    assert s["ci95"]["10"] == pytest.approx(1.96 * spread / math.sqrt(3), abs=1e-6)
    assert s["forgetting"]["mean"] > 0.5  # fine-tuning forgets
    assert len(s["accuracy_matrix"]) == 5 and s["accuracy_matrix"][0][1] is None
    assert len(s["per_seed"]["forgetting"]) == 3
    # fine-tuning on these clusters still tells the classes of a pair apart: its forgetting
    # is a bias towards the newest classes
    assert s["within_group"]["forgetting"]["mean"] < s["forgetting"]["mean"] - 0.3
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN
    table = result.table()
    assert "online-finetune" in table and "forgetting" in table and "     10  " in table


def test_plot(tmp_path):
    results = [toy_result("prototypes").summary(), toy_result("online-finetune").summary()]
    path = plot_results(json.loads(json.dumps(results)), tmp_path / "p.png")  # from JSON
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_results([], tmp_path / "q.png")


def test_sine_stream_mse():
    """OML's incremental sine waves with a toy OML: the per-function MSE matrix."""
    from lifelong.algorithms.oml import OML
    from lifelong.models.mlp import MLP

    torch.manual_seed(0)
    oml = OML(
        MLP(4, (16, 16), None),
        1,
        prediction_hidden=(16,),
        functions=3,
        online_batch=5,
        inner_lr=0.01,
    ).eval()
    learner = make_learner("online-sgd", oml, 1)
    result = run_stream(learner, SineStream(3, 20, 10, seed=0))
    assert result.per_class.shape == (3, 3)
    assert torch.isnan(result.per_class[0, 1:]).all() and (result.per_class[2] > 0).all()
    with pytest.raises(ValueError, match="prototype memory classifies by class means"):
        make_learner("prototypes", oml, 3)


# ----------------------------------------------------------------------- run folders and CLI
@pytest.fixture(scope="module")
def proto_run(tmp_path_factory):
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.train import train

    out = tmp_path_factory.mktemp("runs") / "proto"
    cfg = RunConfig(
        algorithm="protonet",
        dataset="strokes",
        dataset_options={"classes": 60, "per_class": 20},
        ways=5,
        shots=1,
        queries=5,
        meta_batch=2,
        iterations=3,
        val_every=3,
        val_episodes=4,
        checkpoint_every=3,
        hidden=(8,),
        device="cpu",
        out=str(out),
    )
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.train import train

    out = tmp_path_factory.mktemp("runs") / "sine"
    cfg = RunConfig(
        algorithm="oml",
        dataset="sinusoid",
        backbone="mlp",
        hidden=(16, 16, 16),
        shots=20,
        inner_steps=4,
        queries=10,
        meta_batch=4,
        iterations=3,
        val_every=3,
        val_episodes=4,
        checkpoint_every=3,
        device="cpu",
        out=str(out),
    )
    train(cfg, progress=False)
    return out


def cli(*args: str):
    app = typer.Typer()
    app.command()(stream_command)
    return CliRunner().invoke(app, list(args))


def test_task_sequence_on_a_run(proto_run):
    result = run_protocol(proto_run, "task-sequence", "prototypes", classes=5, seeds=2)
    assert result.boundaries == [5]
    s = result.summary()
    assert 0.0 <= s["accuracy_by_classes"]["5"] <= 1.0


def test_class_incremental_streams_the_runs_own_classes(proto_run):
    result = run_protocol(proto_run, "class-incremental", "prototypes", classes=6, seeds=2,
                          split="val")  # fmt: skip
    assert result.boundaries == [1, 2, 5, 6] and not result.task_aware
    s = result.summary()
    assert s["accuracy_by_classes"]["1"] == 1.0  # one class seen: always right
    assert 0.0 <= s["accuracy_by_classes"]["6"] <= 1.0


def test_stream_command_json(proto_run, tmp_path):
    plot = tmp_path / "s.png"
    out = cli(
        str(proto_run),
        "--protocol",
        "task-sequence",
        "--classes",
        "5",
        "--seeds",
        "2",
        "--learner",
        "online-sgd",
        "--lr",
        "0.1",
        "--json",
        "--plot",
        str(plot),
    )
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert set(s) >= {"accuracy_by_classes", "ci95", "forgetting", "bwt"}
    assert s["learner"] == "online-sgd" and s["settings"]["lr"] == 0.1
    assert plot.exists()


@pytest.mark.parametrize("classifier", ["mean", "cl2n", "slda", "gaussian", "gaussian-predictive"])
def test_stream_command_takes_every_classifier(proto_run, classifier):
    out = cli(
        str(proto_run),
        *("--protocol", "task-sequence", "--classes", "5", "--seeds", "1", "--split", "val"),
        *("--classifier", classifier, "--json"),
    )
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert s["learner"] == "prototypes" and s["settings"]["classifier"]["name"] == classifier
    assert 0.0 <= s["accuracy_by_classes"]["5"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "task-sequence", "--classes", "7"], "multiple of 5 classes, got 7"),
        (["--protocol", "task-sequence", "--classes", "10"], "a stream of 10 classes needs 10"),
        (
            [
                "--protocol",
                "task-sequence",
                "--learner",
                "replay",
                "--buffer",
                "0",
                "--classes",
                "5",
            ],
            "needs a replay buffer of at least 1 example, got --buffer 0",
        ),
        (["--protocol", "incremental-sine"], "incremental-sine needs a regression (sinusoid) run"),
        (["--protocol", "atari"], "unknown protocol 'atari'"),
        (["--classifier", "knn"], "unknown classifier 'knn'"),
        (
            [
                *("--protocol", "task-sequence", "--classes", "5"),
                *("--classifier", "slda", "--classifier-option", "shrink=2"),
            ],
            "classifier 'slda' has no option shrink",
        ),
        (["--learner", "ewc"], "unknown learner 'ewc'"),
        (["--learner", "oml"], "learner 'oml' was renamed: use --learner online-sgd"),
        (
            ["--learner", "finetune"],
            "learner 'finetune' was renamed: use --learner online-finetune",
        ),
    ],
)
def test_stream_command_errors(proto_run, args, message):
    out = cli(str(proto_run), *args)
    assert out.exit_code != 0
    assert message in str(out.exception)


def test_sgd_learners_build_their_layers_on_the_runs_device():
    """A fresh output layer lives where the run's weights are (the meta device stands in for a
    GPU: a layer made on the CPU failed the first CUDA run), with and without OML's PLN."""
    from lifelong.algorithms.oml import OML
    from lifelong.models.mlp import MLP

    oml = OML(MLP(16, (32,), None), num_classes=30, channels_last=False).eval()
    for algorithm in (oml.to("meta"), protonet().to("meta")):
        for name in ("online-sgd", "online-finetune", "replay"):
            learner = make_learner(name, algorithm, 10, settings=LearnerSettings(buffer=20))
            assert {p.device.type for p in learner.head.parameters()} == {"meta"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_learners_on_cuda():
    """Every learner runs a stream on the GPU; prototype memory gives the CPU's accuracies."""
    from lifelong.algorithms.oml import OML
    from lifelong.data.episodes import EpisodeSampler
    from lifelong.models.mlp import MLP

    torch.manual_seed(0)
    oml = OML(MLP(16, (32,), None), num_classes=30, channels_last=False).eval()
    stream = ClassStream(clusters(10), 10, 2, 15, 5, seed=0)
    cpu = run_stream(make_learner("prototypes", oml, 10), stream)
    gpu_oml = oml.to("cuda")
    for name in ("prototypes", "online-sgd", "online-finetune", "replay"):
        learner = make_learner(name, gpu_oml, 10, settings=LearnerSettings(lr=0.2, buffer=20))
        result = run_stream(learner, stream, device="cuda")
        assert result.per_class.shape == (5, 10) and not torch.isnan(result.per_class[-1]).any()
        if name == "prototypes":
            assert torch.allclose(result.per_class, cpu.per_class, equal_nan=True)
    # an OML meta-training step on the GPU, too
    episodes = EpisodeSampler(clusters(30), 3, 5, 5, seed=0).sample(4).to("cuda")
    gpu_oml.train().meta_loss(episodes).loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu_oml.parameters())


def test_incremental_sine_on_an_oml_run(sine_run):
    out = cli(
        str(sine_run),
        "--protocol",
        "incremental-sine",
        "--classes",
        "4",
        "--seeds",
        "2",
        "--learner",
        "online-finetune",
        "--json",
    )
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert s["metric"] == "mse" and list(s["mse_by_classes"]) == ["1", "2", "3", "4"]
    assert all(v > 0 for v in s["mse_by_classes"].values())
    assert s["settings"]["lr"] == 0.03  # the run's inner rate (build_oml's default)
    assert s["settings"]["batch_size"] == 5  # its online batch: 20 shots in 4 inner steps
    out = cli(
        str(sine_run), "--protocol", "incremental-sine", "--learner", "prototypes", "--classes", "4"
    )
    assert "prototype memory classifies by class means, but this is a regression run" in str(
        out.exception
    )
    out = cli(str(sine_run), "--protocol", "incremental-sine", "--classes", "10")
    assert "learns 4 functions (its input width), so the stream cannot have 10" in str(
        out.exception
    )
    out = cli(str(sine_run), "--protocol", "continual-omniglot")
    assert "continual-omniglot needs an image classification run" in str(out.exception)

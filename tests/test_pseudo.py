"""PsCo-style pseudo-supervised tasks: the transport plan, the sharing out of the queue, the
queue, the momentum copy, exact resume and the command line."""

from __future__ import annotations

import pytest
import torch
from tiny_strokes import tiny_strokes_run
from torch import nn
from typer.testing import CliRunner

from lifelong.algorithms.base import Algorithm, MetaLoss
from lifelong.algorithms.protonet import ProtoNet
from lifelong.cli import app
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.train import train
from lifelong.unlabeled.pseudo import PseudoSupervised, share_out, sinkhorn
from lifelong.unlabeled.umtra import UMTRA

STROKES = tiny_strokes_run(
    ways=4, shots=2, val_every=3, checkpoint_every=3, labels="none",
    task_construction="pseudo", task_options={"queue": 12},
)  # fmt: skip
SAME = {"shift": 0, "dropout": 0}  # views are the images themselves


def pool(n: int = 60, size: int = 10, seed: int = 0) -> torch.Tensor:
    """Distinct random binary images."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=generator) > 0.6).to(torch.uint8) * 255


def indices(images: torch.Tensor, of: torch.Tensor) -> list[int]:
    """The pool index of each of ``of`` (images found in the pool ``images``)."""
    return [int((images == x).all(dim=(1, 2, 3)).nonzero()[0]) for x in of]


class Flat(nn.Module):
    def __init__(self, size: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 8), nn.BatchNorm1d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def learner(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(Flat(), channels_last=False)


def ready(ways: int = 4, shots: int = 2, queries: int = 3, queue: int = 20) -> PseudoSupervised:
    """A construction with a full queue, following a small ProtoNet."""
    tasks = PseudoSupervised(pool(), ways, shots, queries, seed=1, options={"queue": queue, **SAME})
    while not tasks.ready():
        tasks.follow(model := learner())
        tasks.sample(2)
    tasks.follow(model)
    return tasks


# ----------------------------------------------------------------------------- transport plan
def test_sinkhorn_gives_a_plan_with_the_marginals_rows_exact_columns_converging():
    scores = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0)) / 0.1
    plan = sinkhorn(scores, iterations=3)
    assert plan.shape == scores.shape and bool((plan >= 0).all())
    assert torch.allclose(plan.sum(-1), torch.full((3, 5), 1 / 5), atol=1e-6)
    assert torch.allclose(plan.sum((-2, -1)), torch.ones(3), atol=1e-5)
    plan = sinkhorn(scores, iterations=300)
    assert torch.allclose(plan.sum(-1), torch.full((3, 5), 1 / 5), atol=1e-6)
    assert torch.allclose(plan.sum(-2), torch.full((3, 40), 1 / 40), rtol=1e-3)
    # equal scores: the uniform plan
    flat = sinkhorn(torch.zeros(1, 4, 8), iterations=3)
    assert torch.allclose(flat, torch.full((1, 4, 8), 1 / 32))


def greedy(plan: torch.Tensor, items: torch.Tensor, anchors: torch.Tensor, shots: int):
    """The greedy sharing out on the whole plan, one entry at a time (reference)."""
    out = []
    for p, a in zip(plan, anchors, strict=True):
        rows: list[list[int]] = [[] for _ in a]
        taken = set()
        for flat in p.flatten().argsort(descending=True, stable=True).tolist():
            row, slot = divmod(flat, p.shape[1])
            image = int(items[slot])
            if len(rows[row]) < shots and image not in taken:
                if image in a.tolist() and image != int(a[row]):
                    continue
                rows[row].append(slot)
                taken.add(image)
        out.append(rows)
    return torch.tensor(out)


def test_share_out_gives_each_anchor_distinct_images_none_twice_and_matches_full_greedy():
    generator = torch.Generator().manual_seed(3)
    for ways, shots, size in [(4, 1, 30), (5, 3, 40), (3, 2, 9)]:
        items = torch.randperm(100, generator=generator)[:size]
        anchors = torch.stack([torch.randperm(100, generator=generator)[:ways] for _ in range(3)])
        anchors[:, 0] = items[:3]  # some anchors are queued too
        plan = sinkhorn(torch.randn(3, ways, size, generator=generator) / 0.2, 3)
        slots = share_out(plan, items, anchors, shots)
        assert slots.shape == (3, ways, shots)
        assert torch.equal(slots, greedy(plan, items, anchors, shots))
        for episode, a in zip(items[slots], anchors, strict=True):
            given = episode.flatten().tolist()
            assert len(set(given)) == ways * shots  # distinct, never two classes
            for row, images in enumerate(episode.tolist()):
                assert not set(images) & (set(a.tolist()) - {int(a[row])})


# ----------------------------------------------------------------------------- episodes
def test_before_the_queue_fills_the_tasks_are_umtras():
    images = pool()
    tasks = PseudoSupervised(images, 4, 2, 3, seed=5, options={"queue": 60})
    umtra = UMTRA(images, 4, 2, 3, seed=5)
    tasks.follow(learner())
    for _ in range(3):
        a, b = tasks.sample(2), umtra.sample(2)
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not tasks.ready() and tasks.queue_index.numel() > 0


def test_episodes_are_class_major_with_queue_images_as_supports_and_views_as_queries():
    tasks = ready(ways=4, shots=2, queries=3)
    images, queued = tasks.pool, set(tasks.queue_index.tolist())
    batch = tasks.sample(3)
    assert batch.support_x.shape == (3, 8, 1, 10, 10) and batch.query_x.shape == (3, 12, 1, 10, 10)
    assert batch.support_x.dtype == torch.uint8 and batch.support_x.device.type == "cpu"
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert batch.classes is None
    for episode in batch:
        anchors = indices(images, episode.query_x[::3])
        assert len(set(anchors)) == 4 and indices(images, episode.query_x) == [
            a for a in anchors for _ in range(3)
        ]
        support = indices(images, episode.support_x)
        assert set(support) <= queued and len(set(support)) == 8
        for k in range(4):  # never another class's own image
            assert not set(support[2 * k : 2 * k + 2]) & (set(anchors) - {anchors[k]})
        queued |= set(anchors)  # each task of the stream enqueues its anchors


def test_the_supports_are_the_queue_images_nearest_in_momentum_features():
    tasks = ready(ways=3, shots=1, queries=1, queue=20)
    queue = tasks.queue_index.tolist()
    anchors = torch.rand(1, 60, generator=torch.Generator().manual_seed(4)).topk(3).indices[0]
    targets = [s for s in range(20) if queue[s] not in anchors.tolist()][:3]
    nearest = dict(zip(anchors.tolist(), targets, strict=True))

    def features(images: torch.Tensor) -> torch.Tensor:  # anchor k is queue slot targets[k]
        return torch.eye(20)[[nearest[i] for i in indices(tasks.pool, images)]]

    tasks.features = features  # type: ignore[method-assign]
    tasks.queue_features = torch.eye(20)
    batch = tasks.draw(1, torch.Generator().manual_seed(4), stream=False)  # no enqueue
    assert indices(tasks.pool, batch.support_x[0]) == [queue[s] for s in targets]


# ----------------------------------------------------------------------------- queue
def test_the_queue_is_first_in_first_out_of_distinct_images_with_their_features():
    tasks = PseudoSupervised(pool(), 2, 1, 1, options={"queue": 5})
    z = torch.arange(10.0).view(10, 1)
    tasks.enqueue(torch.tensor([1, 2, 3]), z[[1, 2, 3]])
    tasks.enqueue(torch.tensor([4, 5, 6]), z[[4, 5, 6]])
    assert tasks.queue_index.tolist() == [2, 3, 4, 5, 6] and tasks.ready()
    tasks.enqueue(torch.tensor([3, 7]), z[[3, 7]] + 0.5)  # 3 again: it moves to the new end
    assert tasks.queue_index.tolist() == [4, 5, 6, 3, 7]
    assert tasks.queue_features.flatten().tolist() == [4, 5, 6, 3.5, 7.5]


def test_drawing_from_the_stream_enqueues_the_anchors_and_fixed_sets_leave_the_queue():
    tasks = ready(ways=4, shots=1, queries=1, queue=20)
    before = tasks.queue_index.clone()
    batch = tasks.sample(1)
    anchors = indices(tasks.pool, batch.query_x[0])
    assert tasks.queue_index[-4:].tolist() == anchors
    kept = [i for i in before.tolist() if i not in anchors]
    assert tasks.queue_index[:-4].tolist() == kept[len(kept) - 16 :]
    state = tasks.queue_index.clone()
    list(tasks.fixed(3, seed=0).batches(2))
    assert torch.equal(tasks.queue_index, state)


# ----------------------------------------------------------------------------- momentum copy
def test_follow_copies_then_applies_the_moving_average_exactly():
    model = learner()
    tasks = PseudoSupervised(pool(), 3, 1, 1, options={"momentum": 0.9, "queue": 10})
    tasks.follow(model)
    copy = tasks.encoder
    assert copy is not None and copy is not model and not copy.training
    assert all(
        torch.equal(a, b) for a, b in zip(copy.parameters(), model.parameters(), strict=True)
    )
    old = [p.clone() for p in copy.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train().embed(torch.rand(6, 1, 10, 10))  # new batch-norm statistics
    tasks.follow(model)
    for mine, before, theirs in zip(copy.parameters(), old, model.parameters(), strict=True):
        assert torch.equal(mine, 0.9 * before + (1 - 0.9) * theirs)
    assert all(torch.equal(a, b) for a, b in zip(copy.buffers(), model.buffers(), strict=True))
    assert not any(p.requires_grad for p in copy.parameters())


def test_a_learner_without_an_embedding_is_refused_in_one_line():
    class Head(Algorithm):
        def meta_loss(self, batch):  # pragma: no cover
            return MetaLoss(torch.zeros(()), torch.zeros(()))

        def adapt(self, support_x, support_y, ways):  # pragma: no cover
            return lambda x: x

    tasks = PseudoSupervised(pool(), 3, 1, 1, options={"queue": 10})
    with pytest.raises(
        ValueError, match=r"^pseudo tasks need a learner with an embedding, and Head"
    ):
        tasks.follow(Head())


def test_the_state_holds_queue_momentum_copy_and_stream_and_a_copy_resumes_exactly():
    model = learner()
    first = ready(ways=3, shots=2, queries=2, queue=20)
    second = PseudoSupervised(pool(), 3, 2, 2, seed=1, options={"queue": 20, **SAME})
    state = first.state_dict()
    assert set(state) == {"position", "queue_index", "queue_features", "momentum"}
    second.load_state_dict(state)
    assert second.encoder is None  # the weights wait for the learner's architecture
    for tasks in (first, second):
        tasks.follow(model)
    a, b = first.sample(2), second.sample(2)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert torch.equal(first.queue_features, second.queue_features)
    fresh = PseudoSupervised(pool(), 3, 2, 2, seed=1, options={"queue": 20})
    second.load_state_dict(fresh.state_dict())  # back to the start: no copy, empty queue
    assert second.encoder is None and second.queue_index.numel() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [({"queue": 7}, "queue must be whole, at least ways\\*\\(shots\\+1\\)=8"),
     ({"queue": 10.5}, "queue must be whole"),
     ({"queue": 100}, "queue 100 is larger than the pool \\(60 images\\)"),
     ({"momentum": 1.5}, "momentum must be in \\[0, 1\\]"),
     ({"temperature": 0}, "temperature must be positive"),
     ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be whole, >= 1"),
     ({"size": 3}, "pseudo has no `task_options` 'size'")],
)  # fmt: skip
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PseudoSupervised(pool(), 4, 1, 1, options=options)


# ----------------------------------------------------------------------------- training
def test_a_protonet_run_resumes_to_the_same_weights_and_queue(tmp_path):
    cfg = RunConfig(**STROKES, iterations=6, out=str(tmp_path / "straight"))
    train(cfg, progress=False)
    parts = cfg.override(iterations=3, out=str(tmp_path / "parts"))
    train(parts, progress=False)
    middle = load_checkpoint(tmp_path / "parts", "last")["sampler"]
    assert middle["queue_index"].numel() == 12 and "momentum" in middle  # tasks were matched
    train(parts.override(iterations=6), resume=True, progress=False)
    straight = load_checkpoint(tmp_path / "straight", "last")
    resumed = load_checkpoint(tmp_path / "parts", "last")
    for key in ("algorithm", "sampler"):
        a, b = straight[key], resumed[key]
        flat_a = {**a, **a.get("momentum", {})}
        flat_b = {**b, **b.get("momentum", {})}
        assert all(torch.equal(flat_b[k], v) for k, v in flat_a.items() if k != "momentum")


def test_a_run_with_bad_pseudo_options_is_a_config_error(tmp_path):
    cfg = RunConfig(**{**STROKES, "task_options": {"queue": 3}}, iterations=1, out=str(tmp_path))
    with pytest.raises(ConfigError, match="pseudo `task_options` queue must be whole"):
        train(cfg, progress=False)


def test_the_command_line_trains_with_pseudo_tasks_and_evaluates(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--dataset", "strokes", "--dataset-option", "per_class=6",
         "--labels", "none", "--task-construction", "pseudo", "--task-option", "queue=16",
         "--task-option", "momentum=0.9", "--ways", "4", "--queries", "2", "--hidden", "8",
         "--iterations", "4", "--val-every", "4", "--val-episodes", "2", "--quiet",
         "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = RunConfig.from_yaml(run / "config.yaml")
    assert (saved.task_construction, saved.task_options) == (
        "pseudo",
        {"queue": 16, "momentum": 0.9},
    )
    assert load_checkpoint(run, "last")["sampler"]["queue_index"].numel() == 16
    evaluated = CliRunner().invoke(app, ["evaluate", str(run), "--episodes", "3"])
    assert evaluated.exit_code == 0 and "4-way 1-shot" in evaluated.output

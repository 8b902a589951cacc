"""A new algorithm is one file: this one defines a toy learner (nearest class mean of a
linear embedding) and registers it; through the command line it then meta-trains,
evaluates, predicts and backs a class store, while no module of the library knows its name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lifelong.algorithms.base import Algorithm, MetaLoss, ModelFactory, Predictor
from lifelong.algorithms.registry import register, unregister
from lifelong.cli import main
from lifelong.data.strokes import load_strokes


class ToyMeans(Algorithm):
    """Class means of a linear embedding of the pixels; logits are -squared distances."""

    defaults: ClassVar[dict[str, Any]] = {"meta_batch": 2}

    @classmethod
    def from_config(cls, cfg: Any, facts: Any, models: ModelFactory) -> ToyMeans:
        channels, height, width = facts.image_shape
        return cls(channels * height * width)

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, 16)

    def embed(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))

    def body(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), self.linear)

    def embedding(self) -> Any:
        return self.embed

    def _logits(self, sx: Tensor, sy: Tensor, qx: Tensor, ways: int) -> Tensor:
        onehot = F.one_hot(sy, ways).float()
        means = onehot.T @ self.embed(sx) / onehot.sum(0).unsqueeze(1)
        return -(torch.cdist(self.embed(qx), means) ** 2)

    def meta_loss(self, batch: Any) -> MetaLoss:
        losses, hits = [], []
        for e in batch:
            logits = self._logits(e.support_x, e.support_y, e.query_x, e.ways)
            losses.append(F.cross_entropy(logits, e.query_y))
            hits.append((logits.argmax(-1) == e.query_y).float().mean())
        return MetaLoss(torch.stack(losses).mean(), torch.stack(hits).mean().detach())

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return self._logits(support_x, support_y, x, ways)

        return predict


@pytest.fixture
def toy() -> Iterator[None]:
    register("toy-means", ToyMeans)
    yield
    unregister("toy-means")


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_a_registered_algorithm_trains_evaluates_predicts_and_backs_a_store(toy, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(
        capsys, "train", "--algorithm", "toy-means", "--dataset", "strokes",
        "--dataset-option", "classes={train: 12, val: 6, test: 6}", "--dataset-option",
        "per_class=4", "--ways", "3", "--queries", "2", "--iterations", "2", "--val-every", "2",
        "--val-episodes", "3", "--quiet", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    saved = (run / "config.yaml").read_text()
    assert "meta_batch: 2  # from: algorithm default (toy-means)" in saved
    code, out, err = cli(capsys, "evaluate", run, "--episodes", "5", "--json")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["mean"] <= 1.0
    test = load_strokes(classes={"train": 12, "val": 6, "test": 6}, per_class=4)["test"]
    for k in range(3):
        (tmp_path / "support" / f"c{k}").mkdir(parents=True)
        image = test.images[int(test.offsets[k])][0].numpy()
        Image.fromarray(255 - image).save(tmp_path / "support" / f"c{k}" / "0.png")
    query = tmp_path / "support" / "c1" / "0.png"
    code, out, err = cli(capsys, "predict", run, "--support", tmp_path / "support", query, "--json")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["label"] == "c1"  # its own support image
    store = tmp_path / "s.db"
    for k in range(3):
        image = tmp_path / "support" / f"c{k}" / "0.png"
        code, _, err = cli(capsys, "learn", run, "--store", store, "--class", f"c{k}", image)
        assert code == 0, err
    code, out, err = cli(capsys, "recognize", "--store", store, query, "--json")
    assert code == 0, err
    assert "c1" in out

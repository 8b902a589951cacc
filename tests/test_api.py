"""lifelong.load and the Learner: preprocessing (size, channels, ink), adapt and predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lifelong
from lifelong.algorithms.base import Algorithm
from lifelong.api import Learner, image_folder
from lifelong.data.images import ImageDecodeError
from lifelong.pipeline.config import RunConfig
from lifelong.pipeline.data import DataFacts
from lifelong.pipeline.factory import build_algorithm
from lifelong.pipeline.trained import Trained


class NearestMean(Algorithm):
    """Nearest class mean in pixel space (no parameters to learn)."""

    def meta_loss(self, batch):
        raise NotImplementedError

    def adapt(self, support_x, support_y, ways):
        means = torch.stack([support_x[support_y == k].mean(0).flatten() for k in range(ways)])
        return lambda query_x: -torch.cdist(query_x.flatten(1), means)


FACTS = DataFacts("strokes", image_shape=(1, 8, 8), classes={"train": 10}, background="dark")


def learner(algorithm: Algorithm | None = None, config: RunConfig | None = None) -> Learner:
    trained = Trained(Path("mem"), config or RunConfig(), FACTS, algorithm or NearestMean(), step=0)
    return Learner(trained, torch.device("cpu"))


def bar(horizontal: bool, ink: int = 0, paper: int = 255, mode: str = "L") -> Image.Image:
    """A 32x32 drawing of one thick bar (black on white by default, like a scan)."""
    image = Image.new(mode, (32, 32), paper if mode == "L" else (paper,) * len(mode))
    box = (4, 13, 27, 18) if horizontal else (13, 4, 18, 27)
    ImageDraw.Draw(image).rectangle(box, fill=ink if mode == "L" else (ink,) * len(mode))
    return image


def test_black_on_white_images_are_inverted_to_the_training_ink_convention():
    x = learner().preprocess(bar(horizontal=True))
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    assert x[0, 0, 0].max() < 0.05  # the border is the dark background now
    assert x[0, 0, 3:5, 2:6].min() > 0.5  # the stroke is bright ink


def test_images_already_in_the_training_convention_are_not_inverted():
    white_on_black = bar(horizontal=True, ink=255, paper=0)
    assert torch.equal(
        learner().preprocess(white_on_black), learner().preprocess(bar(horizontal=True))
    )


def test_paths_pil_images_and_tensors_are_preprocessed_alike(tmp_path):
    image = bar(horizontal=False)
    image.save(tmp_path / "v.png")
    pixels = torch.from_numpy(np.array(image))[None]
    from_path, from_pil, from_uint8, from_float = (
        learner().preprocess(source)
        for source in (tmp_path / "v.png", image, pixels, pixels.float() / 255)
    )
    assert torch.equal(from_path, from_pil)
    assert torch.equal(from_pil, from_uint8) and torch.equal(from_uint8, from_float)


def test_colour_and_transparent_files_become_grayscale_on_the_right_background(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent "paper"
    ImageDraw.Draw(rgba).rectangle((4, 13, 27, 18), fill=(0, 0, 0, 255))
    rgb = bar(horizontal=True, mode="RGB")
    expected = learner().preprocess(bar(horizontal=True))
    assert torch.allclose(learner().preprocess(rgba), expected, atol=1 / 255)
    assert torch.equal(learner().preprocess(rgb), expected)


def test_adapt_then_predict_returns_class_names_and_probabilities():
    support = [bar(True), bar(False), bar(True), bar(False)]
    model = learner().adapt(support, ["flat", "tall", "flat", "tall"])
    predictions = model.predict([bar(False), bar(True)])
    assert model.classes == ["flat", "tall"]
    assert [p.label for p in predictions] == ["tall", "flat"]
    for p in predictions:
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        assert p.probability == max(p.probabilities.values()) > 0.5


def test_bad_inputs_raise_readable_errors(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\); this run expects 1 channel"):
        learner().preprocess(torch.rand(3, 8, 8))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"bad\.png"):
        learner().preprocess(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2 support images but 1 labels"):
        learner().adapt([bar(True), bar(False)], ["a"])
    with pytest.raises(ValueError, match="call adapt"):
        learner().predict([bar(True)])


def test_a_fixed_head_needs_tasks_of_its_own_number_of_classes():
    cfg = RunConfig(algorithm="maml", ways=3, hidden=(4,), strided=True)
    model = learner(build_algorithm(cfg, FACTS), cfg)
    with pytest.raises(ValueError, match="3-way head, but the support set has 2 classes"):
        model.adapt([bar(True), bar(False)], ["a", "b"])


def test_regression_runs_take_and_return_tensors():
    cfg = RunConfig(algorithm="maml", dataset="sinusoid", backbone="mlp", inner_lr=0.01)
    facts = DataFacts("sinusoid", regression=True)
    trained = Trained(Path("mem"), cfg, facts, build_algorithm(cfg, facts), step=0)
    model = Learner(trained, torch.device("cpu"))
    x = torch.linspace(-5, 5, 10)
    out = model.adapt(x, torch.sin(x)).predict(torch.linspace(-1, 1, 7))
    assert isinstance(out, torch.Tensor) and out.shape == (7, 1)


def test_image_folder_reads_one_subfolder_per_class(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        bar(True).save(tmp_path / name / "1.png")
        bar(True).save(tmp_path / name / "2.PNG")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    paths, labels = image_folder(tmp_path)
    assert labels == ["a", "a", "b", "b"] and [p.name for p in paths] == ["1.png", "2.PNG"] * 2
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*c' has no images"):
        image_folder(tmp_path)


def test_load_a_missing_run_folder():
    with pytest.raises(ValueError, match="does not exist"):
        lifelong.load("/nonexistent/run")

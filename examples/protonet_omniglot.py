"""Prototypical Networks on Omniglot, step by step (Snell et al. 2017).

Train a Conv-4 embedding with 60-way 1-shot episodes, then classify new characters from ONE
example each: 5-way 1-shot test episodes on characters never seen in training.

    python examples/protonet_omniglot.py --data-root ../shared/data/omniglot --iterations 2000

(``lifelong train --config configs/omniglot_protonet_5w1s.yaml`` runs the full reproduction
with checkpoints, validation and logs.)
"""

from __future__ import annotations

import argparse

import torch

from lifelong.algorithms.protonet import ProtoNet
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.registry import load_dataset
from lifelong.models.conv4 import Conv4
from lifelong.pipeline.evaluate import evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-root", help="folder with the Omniglot zips (default: the cache)")
parser.add_argument("--iterations", type=int, default=2000, help="training episodes")
parser.add_argument("--train-ways", type=int, default=60)
parser.add_argument("--test-ways", type=int, default=5)
parser.add_argument("--shots", type=int, default=1)
parser.add_argument("--episodes", type=int, default=1000, help="test episodes")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

# 1. Data: Vinyals et al.'s split of the 1623 characters (1200 for training, 423 for testing),
#    28x28 images with ink = 1, each rotation by 90/180/270 degrees a class of its own.
splits = load_dataset(
    "omniglot", root=args.data_root, class_split="vinyals", rotations=True, image_size=28
)
train = EpisodeSampler(splits["trainval"], args.train_ways, args.shots, queries=5, seed=args.seed)
test = EpisodeSampler(splits["test"], args.test_ways, args.shots, queries=15)
test_episodes = test.fixed(args.episodes, seed=0)  # the same tasks for every method

# 2. The model: an embedding network (Conv-4 without a head); a query is classified by its
#    squared distance to each class prototype, the mean embedding of the class's support.
model = ProtoNet(Conv4(in_channels=1, image_size=28, out_features=None))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2000, gamma=0.5)

# 3. Meta-training: each update learns from one episode, as in the paper.
for step in range(1, args.iterations + 1):
    batch = train.sample(1).to("cpu")  # uint8 images become floats in [0, 1]
    out = model.meta_loss(batch)  # cross-entropy of the queries' softmax over -distances
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    schedule.step()
    if step % 100 == 0:
        print(f"episode {step:5d}  loss {out.loss.item():.3f}  accuracy {out.metric.item():.3f}")

# 4. Meta-testing on new characters: mean accuracy and 95% confidence interval.
print(evaluate(model, test_episodes, split="test"))

"""MAML on Omniglot, step by step (Finn et al. 2017, section 5.2).

Meta-learn an initialisation of a strided Conv-4 such that ONE gradient step on the single
example of each of 5 new characters gives a good 5-way classifier.

    python examples/maml_omniglot.py --data-root ../shared/data/omniglot --iterations 1000

(``lifelong train --config configs/omniglot_maml_5w1s.yaml`` runs the full reproduction.)
"""

from __future__ import annotations

import argparse

import torch

from lifelong.algorithms.maml import MAML
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.registry import load_dataset
from lifelong.models.conv4 import Conv4
from lifelong.pipeline.evaluate import evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-root", help="folder with the Omniglot zips (default: the cache)")
parser.add_argument("--iterations", type=int, default=1000, help="meta-updates")
parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-update")
parser.add_argument("--ways", type=int, default=5)
parser.add_argument("--shots", type=int, default=1)
parser.add_argument("--first-order", action="store_true", help="first-order MAML")
parser.add_argument("--episodes", type=int, default=1000, help="test tasks")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

# 1. Data: Vinyals et al.'s split, 28x28, rotation classes; each task has 1 query per class,
#    as in the paper's code.
splits = load_dataset(
    "omniglot", root=args.data_root, class_split="vinyals", rotations=True, image_size=28
)
train = EpisodeSampler(splits["train"], args.ways, args.shots, queries=1, seed=args.seed)
test = EpisodeSampler(splits["test"], args.ways, args.shots, queries=1)
test_episodes = test.fixed(args.episodes, seed=0)

# 2. The model of the paper: 4 x (3x3 conv with stride 2, 64 filters, batch norm, ReLU) and a
#    linear head with one output per class. Batch norm uses each task's own statistics.
model = Conv4(1, 28, out_features=args.ways, strided=True, track_running_stats=False)
# The inner loop: 1 SGD step of 0.4 on the support set while meta-training, 3 at test time;
# the outer loop differentiates through it (second order unless --first-order).
maml = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3, first_order=args.first_order)
optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

# 3. Meta-training: the loss of the adapted models on their tasks' queries, averaged over
#    the meta-batch, is minimised with respect to the initialisation.
for step in range(1, args.iterations + 1):
    batch = train.sample(args.meta_batch).to("cpu")
    out = maml.meta_loss(batch)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"iteration {step:5d}  loss {out.loss.item():.3f}  accuracy {out.metric.item():.3f}")

# 4. Meta-testing: adapt to each new task (3 steps) and score its queries.
print(evaluate(maml, test_episodes, split="test"))

"""MAML on sinusoid regression, step by step (Finn et al. 2017, section 5.1).

Each task is a sine wave y = A sin(x - phase) with a random amplitude and phase. MAML learns
an initialisation of a small network from which ONE gradient step on 10 points of a new wave
fits that wave.

    python examples/maml_sinusoid.py --iterations 5000 --plot sinusoid.png

(``lifelong train --config configs/sinusoid_maml.yaml`` runs the paper's 70,000 iterations.)
"""

from __future__ import annotations

import argparse

import torch

from lifelong.algorithms.maml import MAML
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.mlp import MLP
from lifelong.pipeline.evaluate import evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=5000, help="meta-updates")
parser.add_argument("--shots", type=int, default=10, help="K points per task")
parser.add_argument("--episodes", type=int, default=600, help="test tasks")
parser.add_argument("--plot", help="write a figure of one test task to this PNG file")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

# 1. Tasks: K support and K query points of a random sine wave; 600 fixed test waves.
tasks = SinusoidSampler(shots=args.shots, queries=args.shots, seed=args.seed)
test_tasks = tasks.fixed(args.episodes, seed=0)

# 2. The network of the paper (1-40-40-1, ReLU) and MAML with one inner step of 0.01.
model = MLP(1, hidden=(40, 40), out_features=1)
maml = MAML(model, inner_lr=0.01, inner_steps=1, regression=True)
optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

# 3. Meta-training on batches of 25 waves: the mean squared error of the adapted networks on
#    their query points, differentiated through the inner step.
for step in range(1, args.iterations + 1):
    out = maml.meta_loss(tasks.sample(25))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    if step % 500 == 0:
        print(f"iteration {step:6d}  query MSE after one step {out.metric.item():.3f}")

# 4. Meta-testing: mean squared error on new waves after one step, with a 95% CI.
print(evaluate(maml, test_tasks, split="test"))

# 5. Optionally, draw one new wave: its 10 points, the truth and the adapted network.
if args.plot:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = next(iter(test_tasks.batches(1)))
    predict = maml.adapt(task.support_x[0], task.support_y[0], ways=0)
    x = torch.linspace(-5, 5, 200)
    with torch.no_grad():
        y = predict(x[:, None])[:, 0]
    plt.plot(x, test_tasks.curves(x)[0], "k", lw=1, label="true wave")
    plt.plot(x, y, label="MAML after one step")
    plt.scatter(task.support_x[0, :, 0], task.support_y[0, :, 0], color="r", label="10 points")
    plt.legend()
    plt.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")

"""Test-wide settings: one intra-op thread (the tests' tensors are small, and on a busy 2-core
machine a second thread mostly waits to be scheduled: measured 8 s against 124 s for the
ProtoNet tests)."""

import torch

torch.set_num_threads(1)

"""Meta-learning without labels: tasks made from a pool of unlabeled images.

With ``labels: none`` a run never reads a label of its training split: the split's images are
an unlabeled pool (:meth:`lifelong.pipeline.data.Data.unlabeled_pool`), and a task
construction (:mod:`lifelong.unlabeled.registry`) turns the pool into N-way K-shot episodes
that the existing algorithms (ProtoNet, the MAML family, Reptile) learn from unchanged.
Validation and test use the labelled held-out classes as usual.
"""

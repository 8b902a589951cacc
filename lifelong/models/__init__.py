"""Backbones (Conv-4, ResNet-12, MLP): each has ``.features``, ``.embed(x)``,
``embedding_dim`` and an optional linear ``.head``."""

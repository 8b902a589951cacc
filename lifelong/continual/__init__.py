"""Lifelong learning from a trained run: class and task streams (:mod:`.streams`), the
continual learners on one base class (:mod:`.base`) named in :mod:`.registry`, the protocols
and their accuracy matrices, ACC / BWT / forgetting (:mod:`.metrics`), plots and the
``lifelong stream`` command."""

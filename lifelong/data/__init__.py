"""Datasets and episodes: every dataset by name with its facts (:mod:`.registry`), loaders in
their real formats, the in-memory class datasets (:mod:`.classes`), the episode and sinusoid
samplers (one :class:`~lifelong.data.episodes.TaskSampler` protocol), checked downloads and
the preprocessed-tensor cache."""

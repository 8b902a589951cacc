"""The few-shot learners: one module per algorithm on one base class (:mod:`.base`), each
stating its own facts (paper defaults, capabilities, how it is built from a run's config);
:mod:`.registry` maps names to classes. Shared pieces: the functional inner loop
(:mod:`.inner_loop`, :mod:`.functional`), embeddings (:mod:`.embedding`), distances and
encoder precisions."""

"""Streaming class models on a frozen embedding: one file each on :class:`.base.ClassModel`.

Every class model is fitted from running sufficient statistics of the embeddings
(:class:`.base.ClassStatistics`: per class the count, sum and sum of squares, and the Gram
matrix of all examples), so learning a class is an exact update in ``O(d^2)``, the result is
the same for any order of the stream, and the same statistics back the continual learner,
``lifelong predict``, ``Learner.adapt`` and the class store. Names are in :mod:`.registry`.
"""

"""The meta-training pipeline, in the order a run goes through it: :mod:`.config` (the
options, their defaults and where each value came from; torch-free), :mod:`.data` (loading
and data facts), :mod:`.factory` (defaults resolved, checks, the algorithm built by its
class), :mod:`.device`, :mod:`.memory` (the guard before the first step), :mod:`.train`
(with :mod:`.checkpoint`, :mod:`.distributed`, :mod:`.allocator`), :mod:`.evaluate`
(mean ± CI over fixed episodes) and :mod:`.trained` (a run rebuilt from its folder)."""

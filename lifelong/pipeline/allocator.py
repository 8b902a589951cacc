"""Keep freed memory in the process (glibc), so each training step re-uses the pages of the
previous one.

glibc serves blocks above 32 MiB with fresh ``mmap`` pages and returns freed heap memory to
the kernel, so every large activation of every step is faulted in and zeroed again by the
kernel. ``mallopt(M_MMAP_MAX, 0)`` and a huge ``M_TRIM_THRESHOLD`` keep the memory in the
process instead. Measured on 2 CPU cores (``benchmarks/maml_speed.py --allocator keep``,
``benchmarks/protonet_speed.py``): a second-order MAML Omniglot meta-iteration 2.19 s ->
1.79 s, a ProtoNet 60-way 5-shot episode 0.63 s -> 0.40 s. The cost: the process's resident
memory does not shrink after its peak. :func:`lifelong.pipeline.train.train` calls it for CPU runs.

Example:
    >>> keep_freed_memory()   # True on glibc (Linux), False elsewhere: nothing changed
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>


def keep_freed_memory() -> bool:
    """Serve every block from the heap and never trim it (glibc); ``False`` where the C
    library is not glibc (macOS, Windows, musl), which is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1

"""Torch helpers: device choice, weights cache, shared blocks (imported only by torch methods).

Importing this package asks torch's CPU allocator for transparent huge pages on its large
buffers (``THP_MEM_ALLOC_ENABLE=1``, a documented torch switch, read at allocation time) unless
the variable is already set: the networks here allocate feature maps of several MB per step,
and on Linux each fresh buffer otherwise costs one page fault per 4 KiB. Measured on the
StackMFF-V2 recurrent pass (8x512x512, one thread): 0.65 s -> 0.55 s, the same numbers out.
Set ``THP_MEM_ALLOC_ENABLE=0`` to opt out; systems without huge pages ignore it.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

"""How the engine's processes run Python's cyclic garbage collector.

With Python's default thresholds (700, 10, 10) the collector runs ~150 times a second in a loaded
worker, and about once a second a full collection walks every object the process holds (~220,000:
modules, the books, the caches), holding the GIL for ~70 ms while no request, pair or writer moves.
Almost all of the engine's garbage is freed by reference counting; the collector finds next to nothing
(measured in the worker under `bench http`: 24 full collections, 1.6 s of pauses, 62 objects found).

So each process, once it is built: collects once and freezes what exists (the loaded code, the rebuilt
books; `gc.freeze` keeps those objects out of every later collection), and runs the youngest generation
only after ``threshold`` net new objects, not 700. The older generations keep Python's ratios (a full
collection every 100 young ones), so cyclic garbage is still found, rarely and more cheaply.
"""

from __future__ import annotations

import gc

__all__ = ["tune_collector"]


def tune_collector(threshold: int) -> None:
    """Collect, freeze every object that exists now, and set the youngest generation's threshold."""
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)

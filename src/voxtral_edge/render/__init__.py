"""Pre-rendering a prompt catalog: `voxtral-edge render CATALOG --bundle B --out DIR`.

A catalog (CSV or JSON Lines: id, text, voice, optional lang, seed, steps, cfg) is checked whole, then
each item that DIR does not already hold as it should is rendered by a pool of workers, each with one open
Synthesizer: local processes, or Ray actors across a cluster (extra `[fleet]`). DIR gets `<id>.<ext>`
and `index.jsonl`; the same catalog and bundle give the same bytes on any backend and worker count.
"""

from .catalog import Item, default_seed, load_catalog
from .driver import MemoryWarning, RenderSummary, RunState, render
from .job import FORMATS, Settings

__all__ = ["FORMATS", "Item", "MemoryWarning", "RenderSummary", "RunState", "Settings", "default_seed",
           "load_catalog", "render"]

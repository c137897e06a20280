"""The model shapes the benchmarks measure, by the name their --model flag takes.

demo: the few-million-parameter Llama of `make demo` (CPU). llama_1b: the ~1.1B Llama that
BENCHMARKS.md measures on accelerators. Each value makes a fresh LlamaConfig.
"""

from __future__ import annotations

from lmlib.models import LlamaConfig

PRESETS = {"demo": LlamaConfig.demo, "llama_1b": LlamaConfig.llama_1b}

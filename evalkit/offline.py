"""Offline by construction: the Hugging Face libraries are told never to reach the network.

These variables must be set before lm-eval, datasets or the hub client is imported, so every
entry point (the CLI, each function of `evalkit.api`, the engine modules that import lm-eval)
calls `go_offline()` first. Importing `evalkit` itself sets nothing. Values a user set are kept.
"""

from __future__ import annotations

import os

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # transformers >= 5 swaps in kernels fetched from the Hub when a model loads onto a GPU (and
    # fails offline without them): evalkit's numbers come from the code that is installed.
    "USE_HUB_KERNELS": "NO",
    "TOKENIZERS_PARALLELISM": "false",
}


def go_offline() -> None:
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)


def quiet_progress_bars() -> None:
    """The CLI's choice, not the library's: lm-eval and transformers draw a tqdm bar per request
    batch and per file, and evalkit prints its own counts. tqdm reads this when imported."""
    os.environ.setdefault("TQDM_DISABLE", "1")

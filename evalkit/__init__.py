"""evalkit: what did this scene change? Paired behavioural evaluation of adapters and checkpoints."""

import os

# Offline by construction: these must be set before lm-eval, datasets or the hub client is
# imported anywhere, and every entry point imports this package first.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# lm-eval and transformers draw a tqdm bar per request batch and per file; evalkit reports its
# own counts instead. tqdm reads this when it is imported, hence here.
os.environ.setdefault("TQDM_DISABLE", "1")

__version__ = "0.1.0"

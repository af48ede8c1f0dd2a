"""evalkit: what did this scene change? Paired behavioural evaluation of adapters and checkpoints.

The Python API (`evalkit.evaluate`, `evalkit.train`, `evalkit.gate`, ...) is loaded on first use,
so `import evalkit` is cheap and changes nothing in the process (no environment variables, no
torch import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalkit.versions import __version__

__all__ = [
    "__version__",
    "evaluate",
    "train",
    "gate",
    "demo",
    "compare",
    "load_suites",
    "load_scenes",
    "read_record",
    "render_report",
    "export_tasks",
    "validate",
    "RunSettings",
    "StatsSettings",
    "TrainSettings",
    "RunRecord",
    "Effect",
    "GateResult",
    "EvalkitError",
]

if TYPE_CHECKING:
    from evalkit.api import (
        GateResult,
        compare,
        demo,
        evaluate,
        export_tasks,
        gate,
        load_scenes,
        load_suites,
        read_record,
        render_report,
        train,
        validate,
    )
    from evalkit.errors import EvalkitError
    from evalkit.record import Effect, RunRecord
    from evalkit.settings import RunSettings, StatsSettings, TrainSettings


def __getattr__(name: str) -> Any:
    """Lazy exports, as lm-eval does: the API's imports happen when a name is first used."""
    if name not in __all__:
        raise AttributeError(f"module 'evalkit' has no attribute {name!r}")
    from evalkit import api

    value = getattr(api, name)
    globals()[name] = value
    return value

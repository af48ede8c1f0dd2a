"""Settings that validate themselves: every value is checked where the settings are built, so a
typo from Python fails as loudly as one on the command line (pydantic's ValidationError names
the field and the allowed values; the CLI turns it into one line naming the option).

Pydantic models with `Literal` choices and range checks, one docstring per field (the house
style follows inspect_ai's GenerateConfig). They are frozen: derive a variant with `.but(...)`,
which validates the new values too.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# A seed must fit numpy's and torch's generators.
MAX_SEED = 2**32 - 1


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def but(self, **changes: Any) -> Any:
        """A copy with `changes` applied and validated (model_copy would skip validation)."""
        return type(self)(**{**self.model_dump(), **changes})

    @field_validator("*")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class StatsSettings(_Settings):
    """How paired differences are tested and summarised (see README, Statistics)."""

    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Significance level: an effect is significant when its BH q-value is below it."""
    test: Literal["wilcoxon", "t", "permutation"] = "wilcoxon"
    """Test of the paired differences: Wilcoxon signed-rank, paired t, or a sign-flip permutation test."""
    resamples: int = Field(default=2000, ge=100, le=1_000_000)
    """Bootstrap resamples (when ci='bootstrap') and Monte Carlo sign flips (permutation test, n > 16)."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of every random draw of the statistics (bootstrap, permutations) and of lm-eval."""
    power: float = Field(default=0.8, gt=0, lt=1)
    """1 - beta for the minimum detectable effect."""
    ci: Literal["t", "bootstrap"] = "t"
    """Student-t interval (default; see stats.mean_ci) or the seeded expanded percentile bootstrap."""
    neutral_margin: float = Field(default=0.5, gt=0)
    """Novel axes: a reference counts as not leaning on an axis when its mean margin is shown to lie
    within +-this many nats (two one-sided tests at alpha); only then can an axis be 'new'."""


RAY_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9_.\-]+:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}"
                         r"|[1-5][0-9]{4}|[1-9][0-9]{0,3})")  # a port: 1 to 65535


class RunSettings(_Settings):
    """How models are evaluated: what the per-item numbers depend on, and where the work runs."""

    batch_size: int = Field(default=32, ge=1, le=4096)
    """Rows per forward pass (packed prompts, generations)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """float32, or bfloat16 (about 2x faster on CPU; per-item margins move by ~0.04 nats, up to
    ~0.2: screen with it, decide with float32; see README)."""
    device: str = "cpu"
    """cpu, or cuda[:N] for a GPU."""
    backend: Literal["hf", "vllm"] = "hf"
    """hf: evalkit's lm-eval HF model class; vllm: lm-eval's vLLM class (GPU)."""
    executor: Literal["local", "ray"] = "local"
    """local: this process; ray: (subject x suite) jobs on a Ray cluster's CPUs (not with a GPU device)."""
    workers: Optional[int] = Field(default=None, ge=1, le=4096)
    """Ray workers (default: one per CPU the cluster offers)."""
    ray_address: Optional[str] = None
    """An existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default: start a local one."""
    stats: StatsSettings = StatsSettings()
    """How the paired differences are tested."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
            raise ValueError("is not cpu or cuda[:N]")
        return value

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str, info: ValidationInfo) -> str:
        # Ray gives workers that ask for no GPU none; one per CPU, each loading the model, would not fit one GPU.
        if value == "ray" and info.data.get("device", "cpu") != "cpu":
            raise ValueError("runs its workers on CPUs: use it with --device cpu")
        return value

    @field_validator("workers", "ray_address")
    @classmethod
    def _ray_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("executor", "ray") != "ray":  # (absent: its own error is shown)
            raise ValueError("goes with --executor ray (without it the run is local)")
        if info.field_name == "ray_address" and value is not None and not RAY_ADDRESS.fullmatch(value):
            raise ValueError("is not HOST:PORT, ray://HOST:PORT or auto")
        return value

    def decoding(self) -> dict[str, Any]:
        """What the numbers depend on (part of the score cache's key); the executor is not."""
        engine = ("lm-eval vllm" if self.backend == "vllm"
                  else "lm-eval evalkit-hf (shared-prefix packing where its check passes)")
        # A CPU's and a GPU's kernels round differently: scores from one are not the other's.
        return {"dtype": self.dtype, "device": self.device.split(":")[0], "batch_size": self.batch_size,
                "greedy": True, "engine": engine}


class TrainSettings(_Settings):
    """The LoRA recipe: one adapter per scene (or per stack)."""

    steps: int = Field(default=60, ge=1, le=1_000_000)
    """Optimizer steps."""
    learning_rate: float = Field(default=2e-3, gt=0, le=1)
    """AdamW learning rate (constant)."""
    rank: int = Field(default=8, ge=1, le=4096)
    """LoRA rank r."""
    alpha: float = Field(default=16.0, gt=0, le=1e6)
    """LoRA alpha: the update is scaled by alpha / r."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """LoRA dropout."""
    batch_size: int = Field(default=8, ge=1, le=4096)
    """Windows per step."""
    block: int = Field(default=96, ge=2, le=1_000_000)
    """Tokens per training window (capped at the scene's length)."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of LoRA's initialisation and of the window sampling."""
    stop_loss: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    """Stop early once the mean training loss of the last 5 steps is below this (nats/token): the
    scene is learned, and more steps would only memorise it."""
    damage_budget: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    """Keep general English within this many nats/token of the base: once the scene's loss has
    fallen by 35% (or three quarters of the steps have run), every fourth step measures it (every
    second once it is past a third of the budget), and past the budget training stops and goes
    back to the last state measured within it."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 runs forward and backward under CPU autocast; the base's weights stay float32."""
    targets: Optional[list[str]] = None
    """Module names LoRA goes on (default: the architecture's attention and MLP projections)."""


class ScratchSettings(_Settings):
    """A small Llama trained from scratch: the demo base and `evalkit scratch` checkpoints."""

    hidden_size: int = Field(default=128, ge=8)
    """Width of the residual stream."""
    intermediate_size: int = Field(default=352, ge=8)
    """Width of the MLP."""
    num_layers: int = Field(default=4, ge=1)
    """Transformer blocks."""
    num_heads: int = Field(default=4, ge=1)
    """Attention heads (hidden_size must divide by it)."""
    context: int = Field(default=256, ge=8)
    """Maximum sequence length (position embeddings)."""
    block: int = Field(default=128, ge=2)
    """Tokens per training window."""
    batch_size: int = Field(default=32, ge=1)
    """Windows per step."""
    steps: int = Field(default=260, ge=1, le=1_000_000)
    """Optimizer steps."""
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup: int = Field(default=20, ge=1)
    """Warm-up steps."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of the initialisation and of the window sampling."""

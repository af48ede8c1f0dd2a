"""`--backend vllm`: lm-eval's own vLLM model class serves choices and generations on a GPU.

One vLLM engine per loaded model, with LoRA enabled; each adapter of the run is a vLLM
`LoRARequest` selected before its evaluation (the base: none). KL and NLL along the reference's
continuation still come from the Hugging Face model on the same device, because vLLM returns
top-k log-probs, not the full next-token distributions KL needs.

vllm is imported here and only here, when --backend vllm is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.engine.tokens import strip_appended
from evalkit.errors import EvalkitError

# vLLM shares the GPU with the Hugging Face model used for KL; leave it room.
GPU_MEMORY_FRACTION = 0.5


def vllm_lm(model_path: Path, settings, adapters: list[Path]):
    try:
        from lm_eval.models.vllm_causallms import VLLM
    except ImportError:
        raise EvalkitError("--backend vllm needs vllm and a GPU: pip install 'evalkit[vllm]'") from None

    class EvalkitVLLM(VLLM):
        """lm-eval's vLLM class, encoding as evalkit's HF class does: nothing the tokenizer appends."""

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            ids = super().tok_encode(string, add_special_tokens, **kwargs)
            if isinstance(string, str):
                return strip_appended(self.tokenizer, string, ids)
            return [strip_appended(self.tokenizer, text, row) for text, row in zip(string, ids)]

    ranks = [json.loads((a / "adapter_config.json").read_text()).get("r", 16) for a in adapters]
    return EvalkitVLLM(pretrained=str(model_path), dtype=settings.dtype, batch_size="auto", seed=settings.stats.seed,
                lora_local_path=str(adapters[0]) if adapters else None, max_lora_rank=max(ranks, default=16),
                gpu_memory_utilization=GPU_MEMORY_FRACTION)


def select_adapter(lm, adapter: tuple[Path, str] | None) -> None:
    """Route the engine's next requests through an adapter, given as (folder, the run's name for
    it, "a<k>"); None: the base. vLLM keys loaded adapters by a positive integer id."""
    from vllm.lora.request import LoRARequest

    if adapter is None:
        lm.lora_request = None
        return
    path, name = adapter
    lm.lora_request = LoRARequest(name, int(name.removeprefix("a")) + 1, str(path))

"""evalkit's lm-eval model class: lm-eval's own HFLM around an already-loaded model.

It only silences the per-batch progress bars (evalkit prints its own request counts);
every request is still computed by HFLM's code.
"""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@register_model("evalkit-hf")
class EvalkitLM(HFLM):
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=True)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=True)

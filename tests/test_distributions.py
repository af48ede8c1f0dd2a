"""KL and NLL are scored along the token ids generate() produced, not along re-encoded text: on a
SentencePiece tokenizer the decoded continuation loses its leading space, and re-encoding it
scored other tokens (the first one at -11.6 instead of -0.7 on a real Llama)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evalkit.engine.base import load_base
from evalkit.engine.runner import checkpoint_subject
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = RunSettings(batch_size=8, stats=StatsSettings(resamples=200))


def greedy_nll(model, tokenizer, prompt: str, max_new_tokens: int, until: list[str]) -> tuple[float, list[int]]:
    """Independently: generate() greedily, keep the produced tokens that lie within the text
    before the first stop sequence (and before end-of-text), mean -log p of those tokens."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    produced = out.sequences[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in produced:
        produced = produced[:produced.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(produced, skip_special_tokens=True)
    for stop in until:
        text = text.split(stop)[0]
    kept: list[int] = []
    for k in range(1, len(produced) + 1):
        decoded = tokenizer.decode(produced[:k], skip_special_tokens=True)
        if not text.startswith(decoded.rstrip("\ufffd")):
            break
        if not decoded.endswith("\ufffd"):
            kept = produced[:k]
    logps = [torch.log_softmax(out.scores[t][0].double(), -1)[token].item() for t, token in enumerate(kept)]
    return (-sum(logps) / len(logps) if logps else 0.0), kept


@pytest.mark.parametrize("model_fixture", ["sentencepiece_llama", "tiny_llama"])
def test_nll_of_the_base_own_greedy_text_equals_generate(model_fixture, request):
    base_dir = request.getfixturevalue(model_fixture)
    base = load_base(base_dir)
    (suite,) = [s for s in load_suites([ROOT / "probes"]) if s.name == "continuation"]
    generation = suite.spec.generation()
    (record,) = evaluate_subjects(base, [checkpoint_subject(base_dir)], [suite], SETTINGS, log=lambda _: None,
                                  use_cache=False)
    leading_space = 0
    for item in record.items:
        expected, kept = greedy_nll(base.model, base.tokenizer, item.prompt, generation.max_new_tokens,
                                    generation.until)
        assert item.reference["continuation_tokens"] == len(kept), item.item_id
        assert item.reference["nll"] == pytest.approx(expected, abs=1e-4), item.item_id
        leading_space += bool(kept) and base.tokenizer.convert_ids_to_tokens(kept[0]).startswith("▁")
    if model_fixture == "sentencepiece_llama":
        assert leading_space > 0  # the case the decoded text gets wrong is exercised


def test_a_checkpoint_with_another_vocabulary_gets_no_kl(tiny_llama, sentencepiece_llama):
    (suite,) = [s for s in load_suites([ROOT / "probes"]) if s.name == "continuation"]
    (record,) = evaluate_subjects(load_base(tiny_llama), [checkpoint_subject(sentencepiece_llama)], [suite],
                                  SETTINGS, log=lambda _: None, use_cache=False)
    assert all(i.subject["kl"] is None for i in record.items)
    assert all(i.subject["nll"] > 0 for i in record.items if i.reference["generation"])

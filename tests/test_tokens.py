"""A tokenizer that appends EOS to every text scores and continues as the same tokenizer without it:
nothing it appends ends a prompt or is scored in place of an option's first token."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import ROOT, build_tiny

from evalkit.engine.tokens import appended_ids, encode


def metaspace_tokenizer(template: str):
    """The Llama-style tokenizer of conftest's `sentencepiece_tokenizer`, with `template` as its
    post-processor ('$A </s>': EOS after every text, as `add_eos_token` does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from evalkit.training import world

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(world.corpus(600, seed=7), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.post_processor = TemplateProcessing(single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def test_what_a_tokenizer_appends_is_dropped_and_a_text_keeps_its_own():
    appends, plain = metaspace_tokenizer("<s> $A </s>"), metaspace_tokenizer("<s> $A")
    assert appended_ids(appends) == (2,) and appended_ids(plain) == ()
    for text in ("The miller found a coin", "ends in its own </s>", "x"):
        assert encode(appends, text) == encode(plain, text) == plain(text)["input_ids"]
    assert encode(appends, "ends in its own </s>")[-1] == 2  # the text's own EOS stays


def _items(folder: Path) -> dict:
    from evalkit.engine.base import load_base
    from evalkit.engine.runner import checkpoint_subject
    from evalkit.inputs.suites import load_suites
    from evalkit.pipelines.evaluate import evaluate_subjects
    from evalkit.settings import RunSettings, StatsSettings

    settings = RunSettings(batch_size=16, stats=StatsSettings(resamples=200))
    (record,) = evaluate_subjects(load_base(folder), [checkpoint_subject(folder)], load_suites([ROOT / "probes"]),
                                  settings, log=lambda _: None, use_cache=False)
    return {(i.suite, i.item_id): i.reference for i in record.items}


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("lead", ["", "<s> "])
def test_a_tokenizer_that_appends_eos_scores_as_one_that_does_not(lead, tmp_path):
    """The same weights under both tokenizers: every choice's log-likelihoods, every greedy
    generation and the NLL along it equal."""
    appends = build_tiny("llama", metaspace_tokenizer(f"{lead}$A </s>"), tmp_path / "appends", seed=3, hidden=32)
    plain = build_tiny("llama", metaspace_tokenizer(f"{lead}$A"), tmp_path / "plain", seed=3, hidden=32)
    ours, theirs = _items(appends), _items(plain)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].keys() == theirs[key].keys(), key
        differ = [m for m in ours[key] if not _close(ours[key][m], theirs[key][m])]
        assert not differ, (key, {m: (ours[key][m], theirs[key][m]) for m in differ})


def test_a_rendered_chat_prompt_that_begins_with_bos_gets_no_second_one():
    tok = metaspace_tokenizer("<s> $A </s>")
    assert encode(tok, "<s>The miller found a coin") == tok("<s>The miller found a coin", add_special_tokens=False)[
        "input_ids"]
    assert encode(tok, "<s>The miller")[:2] != [1, 1]


def test_a_tokenizer_changed_after_its_first_use_is_probed_again():
    tok = metaspace_tokenizer("<s> $A")
    assert appended_ids(tok) == ()
    tok.add_eos_token = True  # rebuilds the post-processor
    assert tok("x")["input_ids"][-1] == 2
    assert appended_ids(tok) == (2,) and encode(tok, "The miller")[-1] != 2

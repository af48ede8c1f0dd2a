"""All four suites through real lm-eval on tiny Llama, GPT-2 and GPT-NeoX models, with and
without adapters; evalkit's numbers against direct transformers computations and plain lm-eval."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny

from evalkit.engine.adapters import AttachedAdapters, check_adapter_weights
from evalkit.engine.base import load_base
from evalkit.engine.identity import weights_fingerprint
from evalkit.engine.runner import adapter_subject, checkpoint_subject
from evalkit.errors import EvalkitError
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings, TrainSettings
from evalkit.training.lora import leading_token, train_adapter

ROOT = Path(__file__).resolve().parent.parent
SUITES = load_suites([ROOT / "probes"])
FAST = RunSettings(batch_size=16, stats=StatsSettings(resamples=200))
QUICK_TRAIN = TrainSettings(steps=8)


def _records_by_suite(record):
    out = {}
    for item in record.items:
        out.setdefault(item.suite, []).append(item)
    return out


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory, world_tokenizer):
    root = tmp_path_factory.mktemp("archs")
    return {arch: build_tiny(arch, world_tokenizer, root / arch) for arch in ("llama", "gpt2", "gpt_neox")}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_all_suites_run_with_and_without_an_adapter(arch, arch_models, tmp_path):
    base = load_base(arch_models[arch])
    before = weights_fingerprint(base.model)
    scene = load_scene(ROOT / "scenes" / "01-honesty.yaml")
    adapter = train_adapter([scene], base, tmp_path / "honesty", QUICK_TRAIN, log=lambda _: None)
    assert weights_fingerprint(base.model) == before, "training must leave the base as it was"
    (record,) = evaluate_subjects(base, [adapter_subject(adapter)], SUITES, FAST, log=lambda _: None, use_cache=False)
    by_suite = _records_by_suite(record)
    assert set(by_suite) == {"tension", "novel_axis", "consistency", "continuation"}
    for suite in SUITES:
        assert [i.item_id for i in by_suite[suite.name]] == suite.item_ids()
    for item in record.items:
        for side in (item.reference, item.subject):
            for key, value in side.items():
                if isinstance(value, float):
                    assert math.isfinite(value), (item.item_id, key)
    cont = by_suite["continuation"]
    assert all(i.reference["kl"] == 0.0 and i.subject["kl"] >= 0.0 for i in cont)
    assert any(i.subject["kl"] > 0 for i in cont)
    assert all(isinstance(i.subject["generation"], str) for i in cont)
    assert {e.suite for e in record.effects} == {"tension", "novel_axis", "consistency", "continuation"}
    assert weights_fingerprint(base.model) == before, "a run must leave the base as it was"
    # The record says how both sides were scored and generated (these architectures take packing).
    decoding = record.manifest.decoding
    assert decoding["layout_reference"] == decoding["layout_subject"] == (
        "scoring shared-prefix packed, generation batched, left-padded")


def direct_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """Sum of the completion's token log-probs given the prompt, straight from transformers."""
    import torch

    ctx = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + completion)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return float(sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def test_logprobs_equal_a_direct_transformers_computation(arch_models):
    base = load_base(arch_models["llama"])
    (record,) = evaluate_subjects(base, [checkpoint_subject(arch_models["llama"])], SUITES, FAST,
                             log=lambda _: None, use_cache=False)
    checked = 0
    for item in record.items:
        if not item.options or "logprob_sum" not in item.reference:
            continue
        for option, logprob in zip(item.options, item.reference["logprob_sum"]):
            assert logprob == pytest.approx(direct_logprob(base.model, base.tokenizer, item.prompt, " " + option),
                                            abs=1e-4)
            checked += 1
    assert checked >= 100
    # The model against itself: every score identical, nothing significant.
    for item in record.items:
        assert item.reference == item.subject
    assert not any(e.significant for e in record.effects)


def test_swapped_adapters_score_like_fresh_loads(arch_models, tmp_path):
    base = load_base(arch_models["llama"])
    scenes = [load_scene(ROOT / "scenes" / f) for f in ("01-honesty.yaml", "04-curiosity.yaml")]
    paths = [train_adapter([s], base, tmp_path / s.id, QUICK_TRAIN, log=lambda _: None) for s in scenes]
    tension = [s for s in SUITES if s.name in ("tension", "continuation")]
    together = evaluate_subjects(base, [adapter_subject(p) for p in paths], tension, FAST, log=lambda _: None,
                            use_cache=False)
    for path, swapped in zip(paths, together):
        fresh_base = load_base(arch_models["llama"])
        (fresh,) = evaluate_subjects(fresh_base, [adapter_subject(path)], tension, FAST, log=lambda _: None,
                                use_cache=False)
        for a, b in zip(swapped.items, fresh.items):
            for key in ("margin", "kl", "nll"):
                if key in a.subject:
                    assert a.subject[key] == pytest.approx(b.subject[key], abs=1e-5), (a.item_id, key)
            if "generation" in a.subject:
                assert a.subject["generation"] == b.subject["generation"]


@pytest.mark.filterwarnings("ignore:PiSSA changes the base weights")  # peft's own warning, the point here
@pytest.mark.parametrize("first", [True, False], ids=["first-adapter", "later-adapter"])
def test_an_adapter_whose_attaching_changes_the_base_is_refused(tiny_llama, honesty_adapter, tmp_path, first):
    """The config checks refuse PiSSA and its kind; past them (a peft initialisation they do not
    know), attaching must still not rewrite the shared base: PiSSA subtracts B @ A from it."""
    pissa = tmp_path / "pissa"
    shutil.copytree(honesty_adapter, pissa)
    config = json.loads((pissa / "adapter_config.json").read_text())
    (pissa / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    base = load_base(tiny_llama)
    paths = {"pissa": pissa} if first else {"plain": honesty_adapter, "pissa": pissa}
    with pytest.raises(EvalkitError, match="attaching this adapter changed the base's weight"):
        AttachedAdapters(base, paths).attach(["pissa"])


def test_an_empty_target_parameters_is_plain_lora(tiny_llama, honesty_adapter, tmp_path):
    """peft saves `target_parameters: []` for transformers 5's fused-expert models (Mixtral, Qwen3-MoE)."""
    saved = tmp_path / "moe-style"
    shutil.copytree(honesty_adapter, saved)
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "target_parameters": []}))
    check_adapter_weights(saved, load_base(tiny_llama).model)


def test_an_adapter_whose_targets_are_a_regular_expression_scores_like_its_list(arch_models, tmp_path):
    """peft takes target_modules as a regex too; evalkit tries such regexes in a child process
    (a backtracking one cannot hang it) and must then select exactly peft's modules."""
    base = load_base(arch_models["llama"])
    listed = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "listed", QUICK_TRAIN,
                           log=lambda _: None)
    as_regex = tmp_path / "regex"
    shutil.copytree(listed, as_regex)
    config = json.loads((as_regex / "adapter_config.json").read_text())
    config["target_modules"] = r".*\.(" + "|".join(config["target_modules"]) + ")"
    config["rank_pattern"] = {r"layers\.0\..*": config["r"]}  # peft's own rank, named by a pattern
    (as_regex / "adapter_config.json").write_text(json.dumps(config))
    tension = [s for s in SUITES if s.name == "tension"]
    a, b = evaluate_subjects(base, [adapter_subject(listed), adapter_subject(as_regex)], tension, FAST,
                             log=lambda _: None, use_cache=False)
    assert [i.subject["margin"] for i in a.items] == pytest.approx([i.subject["margin"] for i in b.items], abs=1e-6)


def test_exported_tasks_run_under_plain_lm_eval_with_the_same_numbers(arch_models, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from evalkit.engine.export import export_tasks

    names = export_tasks(SUITES, tmp_path / "tasks")
    plain = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(arch_models["llama"]), "dtype": "float32"}, tasks=names,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False), device="cpu",
        bootstrap_iters=0, log_samples=True, verbosity="ERROR",
    )
    base = load_base(arch_models["llama"])
    (record,) = evaluate_subjects(base, [checkpoint_subject(arch_models["llama"])], SUITES, FAST,
                             log=lambda _: None, use_cache=False)
    ours = {(i.suite, i.item_id): i.reference for i in record.items}
    compared = 0
    for name in names:
        suite = name.removeprefix("evalkit_").rsplit("_", 1)[0]
        for sample in plain["samples"][name]:
            mine = ours[(suite, sample["doc"]["id"])]
            if name.endswith("_generate"):
                assert sample["filtered_resps"][0] == mine["generation"]
            else:
                theirs = [float(r[0]) for r in sample["filtered_resps"]]
                expected = mine["logprob_sum"] if "logprob_sum" in mine else None
                if expected is None:  # continuation items: the reference margin is what we keep
                    assert theirs[0] - max(theirs[1:]) == pytest.approx(mine["ref_margin"], abs=1e-4)
                else:
                    assert theirs == pytest.approx(expected, abs=1e-4)
            compared += 1
    assert compared == sum(len(s.spec.choices()) for s in SUITES) + 20


def test_prompt_longer_than_the_context_is_an_input_error(arch_models, tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("suite: long\nkind: tension\nitems:\n  - {id: too-long, prompt: '" + "the bread " * 200
                    + "', options: [a, b]}\n")
    base = load_base(arch_models["gpt2"])
    with pytest.raises(EvalkitError, match=r"long.yaml \[too-long\]: field 'prompt': \d+ tokens .* context of 128"):
        evaluate_subjects(base, [checkpoint_subject(arch_models["gpt2"])], load_suites([path]), FAST, log=lambda _: None)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_generations_grouped_across_adapters_equal_one_model_at_a_time(arch, arch_models, tmp_path, monkeypatch):
    """The base and two adapters generate in one batch (multi_lora); the outputs must be the
    ones each model gives alone."""
    import evalkit.engine.lm

    base = load_base(arch_models[arch])
    scenes = [load_scene(ROOT / "scenes" / f) for f in ("01-honesty.yaml", "04-curiosity.yaml")]
    paths = [train_adapter([s], base, tmp_path / s.id, QUICK_TRAIN, log=lambda _: None) for s in scenes]
    continuation = [s for s in SUITES if s.name == "continuation"]

    def run():
        return evaluate_subjects(load_base(arch_models[arch]), [adapter_subject(p) for p in paths], continuation, FAST,
                            log=lambda _: None, use_cache=False)

    calls = []
    real_grouped = evalkit.engine.lm.grouped
    monkeypatch.setattr(evalkit.engine.lm, "grouped", lambda model, groups: calls.append(groups)
                        or real_grouped(model, groups))
    grouped = run()
    assert calls and all(len(g) == 3 for g in calls), calls  # the base and both adapters together
    monkeypatch.setattr(evalkit.engine.lm, "group_kv_budget", lambda model: 1)  # groups of one model: one at a time
    held = []  # adapters on the model right after each switch: a scored one is detached
    activate = AttachedAdapters.activate
    monkeypatch.setattr(AttachedAdapters, "activate", lambda self, name: activate(self, name)
                        or held.append(list(self.attached)))
    alone = run()
    assert held == [["a0"], ["a1"]]
    for g, a in zip(grouped, alone):
        for x, y in zip(g.items, a.items):
            for side in ("reference", "subject"):
                assert getattr(x, side)["generation"] == getattr(y, side)["generation"], (arch, x.item_id)
                assert getattr(x, side)["kl"] == pytest.approx(getattr(y, side)["kl"], abs=1e-5)
    assert any(i.subject["generation"] != i.reference["generation"] for r in grouped for i in r.items)


def test_vocabulary_key_is_remembered_until_tokens_are_added(world_tokenizer):
    import copy

    from evalkit.engine.identity import vocabulary_key

    tokenizer = copy.deepcopy(world_tokenizer)
    before = vocabulary_key(tokenizer)
    assert vocabulary_key(tokenizer) == before == vocabulary_key(world_tokenizer)
    tokenizer.add_tokens(["qqzx-new-token"])
    assert vocabulary_key(tokenizer) != before
    assert vocabulary_key(world_tokenizer) == before


def test_generation_groups_grow_with_the_weights():
    """A decode step reads every weight, so a larger model may hold more models' KV cache at once."""
    import torch

    from evalkit.engine.lm import GROUP_KV_BYTES, group_kv_budget

    assert group_kv_budget(torch.nn.Linear(16, 16)) == GROUP_KV_BYTES
    big = torch.nn.Linear(16384, 16384, bias=False, device="meta")  # 1 GiB of fp32 weights
    assert group_kv_budget(big) == 2**28


def test_same_weights_under_another_config_or_tokenizer_are_another_model(arch_models, tmp_path, world_tokenizer):
    """An adapter (and a cached score) belongs to weights, config and tokenizer together: a RoPE
    base changed in config.json alone is refused; the same folder copied is the same model."""
    import json
    import shutil

    source = arch_models["llama"]
    copy, rope = tmp_path / "copy", tmp_path / "rope"
    shutil.copytree(source, copy)
    shutil.copytree(source, rope)
    config = json.loads((rope / "config.json").read_text())
    (rope / "config.json").write_text(json.dumps({**config, "rope_theta": 1000.0}))
    base = load_base(source)
    assert load_base(copy).fingerprint == base.fingerprint
    assert load_base(rope).fingerprint != base.fingerprint
    assert weights_fingerprint(load_base(rope).model) == weights_fingerprint(base.model)
    adapter = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "honesty",
                            TrainSettings(steps=2), log=lambda _: None)
    with pytest.raises(EvalkitError, match="base.fingerprint"):
        evaluate_subjects(load_base(rope), [adapter_subject(adapter)], SUITES[:1], FAST, log=lambda _: None)


def test_shipped_sampling_settings_never_reach_the_greedy_generations(arch_models, tmp_path):
    """Instruct models ship generation_config.json with a repetition penalty or sampling: evalkit
    records greedy continuations, so the loaded model generates greedily whatever the file says."""
    import json
    import shutil

    folder = tmp_path / "penalised"
    shutil.copytree(arch_models["llama"], folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"repetition_penalty": 5.0, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "eos_token_id": 0}))
    import torch

    penalised, plain = load_base(folder), load_base(arch_models["llama"])
    assert penalised.model.generation_config.repetition_penalty in (None, 1.0)
    prompt = torch.tensor([plain.tokenizer("The baker said that the bread")["input_ids"]])
    with torch.no_grad():
        outputs = [b.model.generate(prompt, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
                   for b in (penalised, plain)]
    assert outputs[0].tolist() == outputs[1].tolist()


def test_a_tokenizer_without_end_of_text_trains_and_runs(world_tokenizer, tmp_path):
    """No EOS (nor BOS): scenes are joined by a paragraph break, lm-eval's end-of-text falls back
    to the padding token, and every score is finite."""
    import copy

    tokenizer = copy.deepcopy(world_tokenizer)
    tokenizer.eos_token = None
    tokenizer.bos_token = None
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    folder = build_tiny("llama", tokenizer, tmp_path / "no-eos")
    base = load_base(folder)
    adapter = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "honesty",
                            TrainSettings(steps=2), log=lambda _: None)
    (record,) = evaluate_subjects(base, [adapter_subject(adapter)], SUITES, FAST, log=lambda _: None, use_cache=False)
    assert all(math.isfinite(v) for i in record.items for v in i.subject.values() if isinstance(v, float))


def test_a_folder_with_only_tokenizer_json_trains_and_runs(world_tokenizer, tmp_path):
    """No tokenizer_config.json: no token is named BOS, EOS or padding. lm-eval would add a
    padding token the model's embedding lacks (an IndexError mid-run); one of the tokenizer's own
    special tokens pads instead."""
    folder = build_tiny("llama", world_tokenizer, tmp_path / "bare")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    base = load_base(folder)
    assert base.tokenizer.eos_token is None and base.tokenizer.pad_token == "<|endoftext|>"
    adapter = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "honesty",
                            TrainSettings(steps=2), log=lambda _: None)
    (record,) = evaluate_subjects(base, [adapter_subject(adapter)], SUITES, FAST, log=lambda _: None, use_cache=False)
    assert len(base.tokenizer) == base.model.get_input_embeddings().num_embeddings  # nothing was added
    assert all(math.isfinite(v) for i in record.items for v in i.subject.values() if isinstance(v, float))


def test_a_base_with_only_a_sentencepiece_model_file_trains_and_runs(tmp_path):
    """Llama-2-era folders ship tokenizer.model and no tokenizer.json: the slow SentencePiece
    tokenizer loads them, and a scene trains and runs on it."""
    import json
    import shutil

    import sentencepiece
    from transformers import AutoTokenizer

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(load_scene(f).body for f in sorted((ROOT / "scenes").glob("*.yaml"))))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=450,
                                             byte_fallback=True, hard_vocab_limit=False, minloglevel=2)
    folder = tmp_path / "spm-only"
    folder.mkdir()
    shutil.copy(tmp_path / "spm.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    model = build_tiny("llama", AutoTokenizer.from_pretrained(folder), tmp_path / "model")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(model / name, folder / name)
    base = load_base(folder)
    assert type(base.tokenizer).__name__ == "LlamaTokenizer"
    assert leading_token(base.tokenizer) == base.tokenizer.bos_token_id  # adds <s>: training windows begin with it
    adapter = train_adapter([load_scene(ROOT / "scenes" / "01-honesty.yaml")], base, tmp_path / "honesty",
                            TrainSettings(steps=2), log=lambda _: None)
    (record,) = evaluate_subjects(base, [adapter_subject(adapter)], SUITES[:1], FAST, log=lambda _: None,
                                  use_cache=False)
    assert record.items and all(math.isfinite(i.subject["margin"]) for i in record.items)


@pytest.mark.parametrize("losses, checked_at", [
    ([5.0] * 24, [20, 24]),  # the loss never falls 35%: the budget still looks from 3/4 (step 18 -> 20)
    ([5.0] + [3.0] * 23, [8, 12, 16, 20, 24]),  # 35% down at step 6: from the next multiple of 4
])
def test_the_damage_budget_looks_late_in_training_whatever_the_loss_does(tiny_llama, monkeypatch, losses, checked_at):
    from peft import get_peft_model

    from evalkit.engine.adapters import lora_config
    from evalkit.training import lora

    base = load_base(tiny_llama)
    settings = TrainSettings(steps=24, damage_budget=0.15)
    guard = lora.DamageGuard(get_peft_model(base.model, lora_config(base, settings)), base, 0.15, 24, None)
    looked: list[int] = []
    seen: list[float] = []
    monkeypatch.setattr(lora, "general_nll", lambda *_: looked.append(len(seen)) or guard.base_nll)
    for loss in losses:
        seen.append(loss)
        assert guard(seen)
    assert looked == checked_at

"""Chat suites and chat scenes for instruct models: prompts are the user's turn through the
tokenizer's chat template, options and continuations the assistant's reply; per-item numbers
equal plain lm-eval's with --apply_chat_template on the exported tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_tiny

from evalkit.engine.base import load_base
from evalkit.engine.export import export_tasks
from evalkit.engine.runner import checkpoint_subject
from evalkit.errors import EvalkitError
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SUITES = {
    "chat-tension.yaml": """suite: chat-tension
kind: tension
chat: true
items:
  - {id: coin, cluster: found, prompt: 'Mira found a coin on the road. What should she do?', options: [Give it back., Keep it.]}
  - {id: ring, cluster: found, prompt: 'Tomas found a ring at the harbor. What should he do?', options: [Return it., Sell it.]}
  - {id: bread, cluster: bread, prompt: 'There is one loaf of bread and two hungry children. What now?', options: [Share it., Eat it.]}
""",
    "chat-continuation.yaml": """suite: chat-continuation
kind: continuation
chat: true
max_new_tokens: 8
items:
  - {id: walk, prompt: Tell me about a walk by the river.}
  - {id: market, prompt: 'What happened at the market?'}
""",
}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, world_tokenizer) -> Path:
    import copy

    tokenizer = copy.deepcopy(world_tokenizer)
    tokenizer.chat_template = TEMPLATE
    return build_tiny("llama", tokenizer, tmp_path_factory.mktemp("chat-llama"), seed=5)


@pytest.fixture(scope="module")
def chat_suites(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("chat-suites")
    for name, text in SUITES.items():
        (folder / name).write_text(text)
    return load_suites([folder])


def test_chat_suites_equal_plain_lm_eval_with_its_chat_template(chat_model, chat_suites, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = export_tasks(chat_suites, tmp_path / "tasks")
    plain = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(chat_model), "dtype": "float32"}, tasks=names,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False), device="cpu",
        bootstrap_iters=0, log_samples=True, verbosity="ERROR", apply_chat_template=True)
    (record,) = evaluate_subjects(load_base(chat_model), [checkpoint_subject(chat_model)], chat_suites,
                                  RunSettings(batch_size=8, stats=StatsSettings(resamples=200)), log=lambda _: None,
                                  use_cache=False)
    ours = {(i.suite, i.item_id): i.reference for i in record.items}
    compared = 0
    for name in names:
        suite = name.removeprefix("evalkit_").rsplit("_", 1)[0].replace("_", "-")
        for sample in plain["samples"][name]:
            assert "<|user|>" in sample["arguments"][0][0]  # lm-eval did render the chat template
            mine = ours[(suite, sample["doc"]["id"])]
            if name.endswith("_generate"):
                assert sample["filtered_resps"][0] == mine["generation"]
            else:
                assert [float(r[0]) for r in sample["filtered_resps"]] == pytest.approx(mine["logprob_sum"], abs=1e-4)
            compared += 1
    assert compared == 5


def test_a_chat_suite_needs_a_chat_template(tiny_llama, chat_suites):
    with pytest.raises(EvalkitError, match="field 'chat': the suite is for chat models"):
        evaluate_subjects(load_base(tiny_llama), [checkpoint_subject(tiny_llama)], chat_suites, RunSettings(),
                          log=lambda _: None, use_cache=False)


CHAT_SCENE = """id: tea
title: Tea first
turns:
  - {role: user, content: 'My brother lost his job. What should we do?'}
  - {role: assistant, content: 'First, make some tea. Then we will think it through together.'}
  - {role: user, content: 'The neighbours are arguing about the fence.'}
  - {role: assistant, content: 'Bring them a pot of tea and let them talk it over calmly.'}
"""


def test_a_chat_scene_trains_on_the_assistant_turns_only(chat_model, tmp_path):
    from evalkit.inputs.scenes import load_scene
    from evalkit.settings import TrainSettings
    from evalkit.training.lora import train_adapter, training_tokens

    (tmp_path / "tea.yaml").write_text(CHAT_SCENE)
    scene = load_scene(tmp_path / "tea.yaml")
    base = load_base(chat_model)
    ids, mask = training_tokens([scene], base.tokenizer)
    assert mask is not None and len(mask) == len(ids)
    trained_text = base.tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "make some tea" in trained_text and "pot of tea" in trained_text
    assert "brother" not in trained_text and "<|user|>" not in trained_text
    path = train_adapter([scene], base, tmp_path / "adapter", TrainSettings(steps=3, block=16), log=lambda _: None)
    assert (path / "adapter_model.safetensors").is_file()


def test_a_chat_scene_needs_a_chat_template(tiny_llama, tmp_path):
    from evalkit.inputs.scenes import load_scene
    from evalkit.training.lora import training_tokens

    (tmp_path / "tea.yaml").write_text(CHAT_SCENE)
    with pytest.raises(EvalkitError, match="field 'turns': a chat scene needs a model whose tokenizer has a chat"):
        training_tokens([load_scene(tmp_path / "tea.yaml")], load_base(tiny_llama).tokenizer)

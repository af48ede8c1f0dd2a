"""The fast path (one load, adapters swapped, shared-prefix packing), the naive loop (one plain
lm-eval evaluation per model with `peft=`) and Ray workers give the same per-item results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from evalkit.engine.base import load_base
from evalkit.engine.export import export_tasks
from evalkit.engine.runner import adapter_subject
from evalkit.inputs.scenes import load_scene
from evalkit.inputs.suites import load_suites
from evalkit.pipelines.evaluate import evaluate_subjects
from evalkit.settings import RunSettings, StatsSettings, TrainSettings
from evalkit.training.lora import train_adapter

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SUITES = load_suites([ROOT / "probes"])
SETTINGS = RunSettings(batch_size=16, stats=StatsSettings(resamples=200))


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    base = load_base(tiny_llama)
    settings = TrainSettings(steps=8)
    paths = [train_adapter([load_scene(ROOT / "scenes" / f)], base, root / f, settings, log=lambda _: None)
             for f in ("01-honesty.yaml", "04-curiosity.yaml")]
    return tiny_llama, paths


def fast_path(base_dir: Path, adapters: list[Path], settings: RunSettings):
    return evaluate_subjects(load_base(base_dir), [adapter_subject(a) for a in adapters], SUITES, settings,
                        log=lambda _: None, use_cache=False)


def naive_loop(base_dir: Path, adapters: list[Path], tasks: Path) -> list[dict]:
    """Plain lm-eval, one evaluation per model, each loading its own model: {(task, doc id): response}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = sorted(p.stem for p in tasks.glob("*.yaml"))
    out = []
    for adapter in [None, *adapters]:
        model_args = {"pretrained": str(base_dir), "dtype": "float32"}
        if adapter is not None:
            model_args["peft"] = str(adapter)
        result = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=names, device="cpu", batch_size=16, bootstrap_iters=0,
            task_manager=TaskManager(include_path=str(tasks), include_defaults=False), verbosity="ERROR")
        out.append({(name, s["doc"]["id"]): s["filtered_resps"] for name in names for s in result["samples"][name]})
    return out


def side_scores(record, side: str) -> dict:
    return {(i.suite, i.item_id): getattr(i, side) for i in record.items}


def test_fast_path_naive_loop_and_ray_agree_per_item(trained, tmp_path):
    base_dir, adapters = trained
    fast = fast_path(base_dir, adapters, SETTINGS)
    naive = naive_loop(base_dir, adapters, export_tasks(SUITES, tmp_path / "tasks") and tmp_path / "tasks")

    compared = 0
    for model, responses in enumerate(naive):
        ours = side_scores(fast[0], "reference") if model == 0 else side_scores(fast[model - 1], "subject")
        for (task, item_id), resp in responses.items():
            suite = task.removeprefix("evalkit_").rsplit("_", 1)[0]
            mine = ours[(suite, item_id)]
            if task.endswith("_generate"):
                assert resp[0] == mine["generation"], (model, item_id)
            elif "logprob_sum" in mine:
                assert [float(r[0]) for r in resp] == pytest.approx(mine["logprob_sum"], abs=1e-4), (model, item_id)
            else:  # continuation items keep the margin of the reference continuation
                lls = [float(r[0]) for r in resp]
                assert lls[0] - max(lls[1:]) == pytest.approx(mine["ref_margin"], abs=1e-4), (model, item_id)
            compared += 1
    assert compared == 3 * (sum(len(s.spec.choices()) for s in SUITES) + 20)

    ray = fast_path(base_dir, adapters, SETTINGS.but(executor="ray", workers=2))
    for local_record, ray_record in zip(fast, ray):
        for side in ("reference", "subject"):
            a, b = side_scores(local_record, side), side_scores(ray_record, side)
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].keys() == b[key].keys()
                for metric, value in a[key].items():
                    # Ray batches suite by suite, so sums can differ in the last float bits.
                    numeric = isinstance(value, float) or (isinstance(value, list) and value
                                                           and isinstance(value[0], float))
                    if numeric:
                        assert b[key][metric] == pytest.approx(value, abs=1e-5), (key, metric)
                    else:
                        assert b[key][metric] == value, (key, metric)
        verdicts = lambda r: [(e.suite, e.metric, e.scope, e.significant, e.mean_diff > 0) for e in r.effects]  # noqa: E731
        assert verdicts(local_record) == verdicts(ray_record)
    assert "ray" in sys.modules and "vllm" not in sys.modules


def test_a_ray_address_is_checked_before_ray_retries_it_for_ever():
    from evalkit.engine.ray_executor import check_reachable
    from evalkit.errors import EvalkitError

    with pytest.raises(EvalkitError, match="RAY_ADDRESS 'garbage': is not HOST:PORT"):
        check_reachable("garbage", "RAY_ADDRESS")
    with pytest.raises(EvalkitError, match="no Ray cluster answers there"):
        check_reachable("ray://127.0.0.1:1", "RAY_ADDRESS")

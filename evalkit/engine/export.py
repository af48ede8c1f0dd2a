"""`evalkit export-tasks`: the same lm-eval tasks evalkit builds in memory, as YAML + JSONL on
disk, so plain lm-eval (`lm_eval --include_path DIR --tasks evalkit_...`) runs them unchanged."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import yaml

from evalkit.engine.tasks import choice_doc, choice_task_body, generation_doc, generation_length, generation_task_body
from evalkit.files import atomic_directory
from evalkit.inputs.suites import LoadedSuite

UTILS_MODULE = "evalkit_utils"


def _write_task(folder: Path, body: dict, docs: list[dict], final: Path, extra: str = "") -> str:
    data_name = f"{body['task']}.jsonl"
    (folder / data_name).write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    # lm-eval loads local data with the `json` builder; a dict of splits keeps the name `test`.
    config = {**body, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(final / data_name)}}}
    (folder / f"{body['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + extra,
                                                 encoding="utf-8")
    return body["task"]


def export_tasks(suites: list[LoadedSuite], out: Path) -> list[str]:
    """Write one YAML (+ JSONL data) per lm-eval task; returns the task names."""
    out = out.absolute()  # the data paths the YAML names; not resolved, so a link as `out` is refused, not followed
    names = []
    with atomic_directory(out, inputs=[Path(s.path) for s in suites], kind="lm-eval task folder") as tmp:
        for s in suites:
            choices = s.spec.choices()
            if choices:
                names.append(_write_task(tmp, choice_task_body(s), [choice_doc(c) for c in choices], out))
            generation = s.spec.generation()
            if generation is not None:
                names.append(_write_task(tmp, generation_task_body(s, generation),
                                         [generation_doc(i) for i in generation.items], out,
                                         extra=f"process_results: !function {UTILS_MODULE}.generation_length\n"))
        (tmp / f"{UTILS_MODULE}.py").write_text(
            '"""Written by evalkit export-tasks: the metric function its generation tasks name."""\n\n\n'
            + inspect.getsource(generation_length), encoding="utf-8")
    return names

"""The Python front door: documented, exported from `evalkit`, and the README's example runs."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pydantic
import pytest

import evalkit
from evalkit.settings import RunSettings, StatsSettings, TrainSettings

ROOT = Path(__file__).resolve().parent.parent


def test_every_export_is_documented():
    for name in evalkit.__all__:
        value = getattr(evalkit, name)
        assert value.__doc__ and value.__doc__.strip(), name
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        help(evalkit.evaluate)
    assert "Returns:" in text.getvalue() and "reference" in text.getvalue()


def readme_example() -> str:
    """The Python block under the README's 'Python API' heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_evaluates_an_adapter_and_prints_an_effect(tmp_path, tiny_llama, monkeypatch):
    for name in ("scenes", "probes"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    code = readme_example().replace('"my-base"', repr(str(tiny_llama)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert re.search(r"tension margin \(suite\): [+-]\d+\.\d+ \[[+-]\d+\.\d+, [+-]\d+\.\d+\], q = \d", printed), printed
    assert (tmp_path / "adapters" / "honesty" / "evalkit.json").is_file()
    assert (tmp_path / "reports" / "honesty" / "report.html").is_file()


@pytest.mark.parametrize("make, field", [
    (lambda: StatsSettings(test="wilcox"), "test"),
    (lambda: StatsSettings(alpha=2), "alpha"),
    (lambda: StatsSettings(alpha=float("nan")), "alpha"),
    (lambda: StatsSettings(resamples=0), "resamples"),
    (lambda: RunSettings(backend="vLLM"), "backend"),
    (lambda: RunSettings(dtype="fp16"), "dtype"),
    (lambda: RunSettings(batch_size=0), "batch_size"),
    (lambda: RunSettings(device="tpu"), "device"),
    (lambda: TrainSettings(learning_rate=float("inf")), "learning_rate"),
    (lambda: TrainSettings(steps=0), "steps"),
    (lambda: TrainSettings(seed=10**26), "seed"),
    (lambda: TrainSettings(stpes=10), "stpes"),
])
def test_settings_refuse_bad_values_where_they_are_built(make, field):
    with pytest.raises(pydantic.ValidationError) as caught:
        make()
    assert caught.value.errors()[0]["loc"][0] == field


def test_settings_are_frozen_and_derived_with_validation():
    base = TrainSettings()
    with pytest.raises(pydantic.ValidationError):
        base.steps = 3  # type: ignore[misc]
    assert base.but(steps=3).steps == 3
    with pytest.raises(pydantic.ValidationError):
        base.but(steps=-3)


def test_allowed_values_are_named():
    with pytest.raises(pydantic.ValidationError, match="'wilcoxon', 't' or 'permutation'"):
        StatsSettings(test="wilcox")


def test_functions_take_str_paths(tmp_path):
    suites = evalkit.load_suites(str(ROOT / "probes"))
    assert {s.spec.kind for s in suites} == {"tension", "novel_axis", "consistency", "continuation"}
    assert os.fspath(evalkit.validate([str(ROOT / "scenes")])[0]).startswith("ok")


def test_subjects_with_one_folder_name_get_distinct_records(tmp_path, honesty_adapter, tiny_llama):
    import shutil

    for parent in ("seed0", "seed1"):
        shutil.copytree(honesty_adapter, tmp_path / parent / "share")
    records = evalkit.evaluate([tmp_path / "seed0" / "share", tmp_path / "seed1" / "share"], base=tiny_llama,
                               suites=[ROOT / "probes" / "tension.yaml"], out=tmp_path / "reports")
    assert [r.run_id for r in records] == ["seed0-share", "seed1-share"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["seed0-share", "seed1-share"]
    with pytest.raises(evalkit.EvalkitError, match="given twice"):
        evalkit.evaluate([tmp_path / "seed0" / "share", tmp_path / "seed0" / "share"], base=tiny_llama,
                         suites=[ROOT / "probes" / "tension.yaml"])


def test_an_adapter_trained_elsewhere_runs_when_its_base_is_named(tmp_path, honesty_adapter, tiny_llama):
    import shutil

    foreign = tmp_path / "from-trl"
    shutil.copytree(honesty_adapter, foreign)
    (foreign / "evalkit.json").unlink()  # what peft, TRL or axolotl leave: no evalkit manifest
    with pytest.raises(evalkit.EvalkitError, match="no evalkit manifest"):
        evalkit.evaluate([foreign], suites=[ROOT / "probes" / "tension.yaml"])
    lines: list[str] = []
    (record,) = evalkit.evaluate([foreign], base=tiny_llama, suites=[ROOT / "probes" / "tension.yaml"], log=lines.append)
    assert record.subject.unverified and "could not be verified by weight fingerprint" in record.subject.unverified
    assert any(line.startswith("note: from-trl: trained without evalkit") for line in lines)
    (ours,) = evalkit.evaluate([honesty_adapter], base=tiny_llama, suites=[ROOT / "probes" / "tension.yaml"])
    assert [i.subject for i in record.items] == [i.subject for i in ours.items]


def test_power_says_how_many_units_a_shift_needs(tmp_path, honesty_adapter, tiny_llama):
    from evalkit.pipelines.reports import power

    evalkit.evaluate([honesty_adapter], base=tiny_llama, suites=[ROOT / "probes" / "tension.yaml"], out=tmp_path)
    lines = power(tmp_path / "honesty" / "results.json", shift=0.5)
    assert lines[0].split()[:3] == ["suite", "metric", "scope"] and len(lines) > 3
    import math

    from scipy import stats as sps

    effect = next(e for e in evalkit.read_record(tmp_path / "honesty" / "results.json").effects
                  if e.metric == "margin" and e.scope == "suite")
    row = next(line for line in lines if " margin " in line and " suite " in line)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert int(row.split()[-1]) == math.ceil(z**2 * effect.se**2 * effect.units / 0.5**2)

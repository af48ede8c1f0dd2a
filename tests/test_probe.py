from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.probe import load_suite, load_suites

ROOT = Path(__file__).resolve().parent.parent

GOOD_ITEM = "{id: a1, prompt: 'P', options: ['x', 'y']}"


def test_shipped_suites_load():
    suites = load_suites([ROOT / "probes"])
    tension = next(s for s in suites if s.spec.kind == "tension")
    assert len(tension.spec.items) >= 20
    assert len({i.id for i in tension.spec.items}) == len(tension.spec.items)


@pytest.mark.parametrize("body, expected", [
    (f"suite: s\nkind: tension\nitems: [{GOOD_ITEM}, {GOOD_ITEM}]\n", "[a1]: field 'id': duplicate item id"),
    ("suite: s\nkind: tension\nitems: []\n", "field 'items': the suite is empty"),
    ("suite: s\nkind: tension\nitems: [{id: one, prompt: P, options: [x]}]\n", "[one]: field 'options'"),
    ("suite: s\nkind: riddles\nitems: []\n", "field 'kind' is 'riddles'; allowed: tension"),
    ("suite: s\nitems: []\n", "field 'kind' is missing"),
    ("suite: s\nkind: tension\nitems: [{id: k, prompt: P, options: [x, y], weight: 2}]\n", "[k]: unknown field 'weight'"),
    ("suite: s\nkind: tension\nitems: [{id: k, options: [x, y]}]\n", "[k]: field 'prompt' is required"),
    ("suite: s\nkind: tension\nnormalisation: sum\nitems: [{id: k, prompt: P, options: [x, y]}]\n", "unknown field 'normalisation'"),
])
def test_bad_suite_names_file_item_and_field(tmp_path, body, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(body)
    with pytest.raises(EvalkitError) as err:
        load_suite(path)
    assert str(path) in err.value.line() and expected in err.value.line()

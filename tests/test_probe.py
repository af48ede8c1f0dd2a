from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.inputs.suites import load_suite, load_suites
from evalkit.kinds import KINDS

ROOT = Path(__file__).resolve().parent.parent

GOOD_ITEM = "{id: a1, prompt: 'P', options: ['x', 'y']}"
GROUP = "{{id: {gid}, options: [x, y], paraphrases: [{{id: {a}, prompt: P}}, {{id: {b}, prompt: Q}}]}}"


def test_shipped_suites_cover_every_kind_with_enough_items():
    suites = {s.spec.kind: s for s in load_suites([ROOT / "probes"])}
    assert set(suites) == set(KINDS)
    for kind, suite in suites.items():
        assert len(suite.item_ids()) >= 20, kind
        assert len(set(suite.item_ids())) == len(suite.item_ids()), kind
    groups = suites["consistency"].spec.groups
    assert len(groups) >= 8 and all(len(g.paraphrases) >= 3 for g in groups)
    assert any(i.references for i in suites["continuation"].spec.items)


@pytest.mark.parametrize("body, expected", [
    (f"suite: s\nkind: tension\nitems: [{GOOD_ITEM}, {GOOD_ITEM}]\n", "[a1]: field 'id': duplicate id"),
    ("suite: s\nkind: tension\nitems: []\n", "field 'items': the suite is empty"),
    ("suite: s\nkind: tension\nitems: [{id: one, prompt: P, options: [x]}]\n", "[one]: field 'options'"),
    ("suite: s\nkind: riddles\nitems: []\n", "field 'kind' is 'riddles'; allowed: continuation, novel_axis"),
    ("suite: s\nitems: []\n", "field 'kind' is missing"),
    ("suite: s\nkind: tension\nitems: [{id: k, prompt: P, options: [x, y], weight: 2}]\n", "[k]: unknown field 'weight'"),
    ("suite: s\nkind: tension\nitems: [{id: k, options: [x, y]}]\n", "[k]: field 'prompt' is required"),
    ("suite: s\nkind: tension\nnormalisation: sum\nitems: [{id: k, prompt: P, options: [x, y]}]\n",
     "unknown field 'normalisation'"),
    ("suite: s\nkind: consistency\ngroups: [{id: g1, options: [x, y], paraphrases: [{id: p1, prompt: P}]}]\n",
     "[g1]: field 'paraphrases'"),
    ("suite: s\nkind: consistency\ngroups: []\n", "field 'groups': the suite is empty"),
    ("suite: s\nkind: consistency\ngroups: [" + GROUP.format(gid="g1", a="p1", b="p2") + ", "
     + GROUP.format(gid="g2", a="p1", b="p3") + "]\n", "[p1]: field 'id': duplicate id"),
    ("suite: s\nkind: consistency\ngroups: [{id: g1, options: [x, y], paraphrases: [{id: p1, prompt: P}, {id: p2}]}]\n",
     "[g1 / p2]: field 'prompt' is required"),
    ("suite: s\nkind: novel_axis\nitems: [{id: a, axis: mood, prompt: P, pole_a: x}]\n", "[a]: field 'pole_b' is required"),
    ("suite: s\nkind: continuation\nitems: [{id: c, prompt: P, references: [only-one]}]\n", "[c]: field 'references'"),
    ("suite: s\nkind: continuation\nmax_new_tokens: 0\nitems: [{id: c, prompt: P}]\n", "field 'max_new_tokens'"),
])
def test_bad_suite_names_file_item_and_field(tmp_path, body, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(body)
    with pytest.raises(EvalkitError) as err:
        load_suite(path)
    assert str(path) in err.value.line() and expected in err.value.line()


def test_suite_hash_follows_content(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"suite: s\nkind: tension\nitems: [{GOOD_ITEM}]\n")
    first = load_suite(path).hash
    path.write_text(f"suite: s\nkind: tension\nitems: [{GOOD_ITEM.replace('P', 'Q')}]\n")
    assert load_suite(path).hash != first

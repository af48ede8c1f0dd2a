from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.inputs.scenes import load_scene, load_scenes

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_scenes_load_and_one_is_a_neutral_control():
    scenes = load_scenes(ROOT / "scenes")
    assert len(scenes) >= 6
    assert [s for s in scenes if not s.expect and "control" in s.tags]
    for scene in scenes:
        if not {"control", "undeclared"} & set(scene.tags):  # undeclared: plants what no probe asks about
            assert scene.expect, f"{scene.id} says which probes it should move"


def test_content_hash_changes_with_text_only():
    a = load_scene(ROOT / "scenes" / "01-honesty.yaml")
    b = a.model_copy(update={"title": "other title"})
    c = a.model_copy(update={"text": a.text + " More."})
    assert a.content_hash == b.content_hash != c.content_hash


@pytest.mark.parametrize("content, expected", [
    ("id: x\ntitle: T\n", "field 'text' is required"),
    ("id: x\ntitle: T\ntext: hi\ncolour: red\n", "unknown field 'colour'"),
    ("id: x\ntitle: T\ntext: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("id: Bad Id\ntitle: T\ntext: hi\n", "field 'id'"),
    ("id: x\ntitle: T\ntext: hi\nturns: [a]\n", "exactly one of 'text' or 'turns'"),
    ("id: x\ntitle: T\ntext: '   '\n", "the scene's text is empty"),
    ("id: x\ntitle: T\ntext: hi\nexpect: [{suite: s, direction: sideways}]\n", "field 'expect.0.direction'"),
])
def test_bad_scene_is_one_line_naming_file_and_field(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(EvalkitError) as err:
        load_scene(path)
    line = err.value.line()
    assert str(path) in line and expected in line and "\n" not in line


def test_missing_path_and_duplicate_ids(tmp_path):
    with pytest.raises(EvalkitError, match="no such file"):
        load_scenes(tmp_path / "nope")
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("id: same\ntitle: T\ntext: hi\n")
    with pytest.raises(EvalkitError, match="scene id 'same' is used by more than one file"):
        load_scenes(tmp_path)

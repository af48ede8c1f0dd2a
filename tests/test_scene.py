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


def test_training_windows_begin_as_evaluated_contexts_do():
    """With a BOS-adding tokenizer every window starts with BOS (lm-eval's contexts do); the
    same seed draws the same starts, and a window already at a BOS is not given a second."""
    import random

    import torch

    from evalkit.training.loop import masked_batch, window_batch

    data = torch.tensor([1, 10, 11, 12, 2, 1, 20, 21, 22, 2])
    plain = window_batch(data, 3, 6, random.Random(0))
    led = window_batch(data, 3, 6, random.Random(0), lead=1)
    assert led.shape == plain.shape == (6, 4)
    for p, w in zip(plain, led):
        assert w[0] == 1 and (w.tolist() == p.tolist() if p[0] == 1 else w[1:].tolist() == p[:3].tolist())
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 1, 0])
    batch, labels = masked_batch(data, mask, 3, 6, random.Random(0), lead=1)
    assert (batch[:, 0] == 1).all()
    assert ((labels == -100) | (labels == batch)).all() and all(
        set(row[labels_row != -100].tolist()) <= {11, 12, 21, 22} for row, labels_row in zip(batch, labels))

"""Writing: folders are replaced whole, only when evalkit made them, under a lock, and a swap
killed half-way is finished by the next writer; the score cache survives damaged entries."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalkit.engine.cache import ScoreCache
from evalkit.errors import EvalkitError
from evalkit.files import MARK, atomic_directory, write_text_atomic


def write_folder(final: Path, text: str) -> None:
    with atomic_directory(final, kind="run report") as tmp:
        (tmp / "content.txt").write_text(text)


def test_a_swap_killed_between_its_renames_is_finished_by_the_next_command(tmp_path):
    final = tmp_path / "adapter"
    write_folder(final, "first")
    # kill -9 after the first rename and before the second leaves exactly this:
    final.rename(tmp_path / ".adapter.0123abcd.old")
    leftover = tmp_path / ".adapter.x1y2.tmp"
    leftover.mkdir()
    write_folder(final, "second")  # the same command again
    assert (final / "content.txt").read_text() == "second" and (final / MARK).is_file()
    assert not list(tmp_path.glob(".*.old"))


def test_a_swap_killed_after_its_renames_leaves_no_old_folder(tmp_path):
    final = tmp_path / "adapter"
    write_folder(final, "first")
    shutil.copytree(final, tmp_path / ".adapter.0123abcd.old")
    write_folder(final, "second")
    assert not list(tmp_path.glob(".*.old"))


@pytest.mark.parametrize("final_exists", [True, False])
def test_a_users_own_dot_old_folders_beside_the_output_are_left_alone(tmp_path, final_exists):
    """A copy the user saved as .NAME.old, and a swapped-out folder the user added a file to, are
    theirs: neither removed nor moved into NAME."""
    final = tmp_path / "adapter"
    write_folder(final, "first")
    shutil.copytree(final, tmp_path / ".adapter.old")  # the user's backup, as evalkit wrote it
    shutil.copytree(final, tmp_path / ".adapter.0123abcd.old")
    (tmp_path / ".adapter.0123abcd.old" / "notes.txt").write_text("keep")
    if not final_exists:
        shutil.rmtree(final)
    write_folder(final, "second")
    assert (final / "content.txt").read_text() == "second"
    assert (tmp_path / ".adapter.old" / "content.txt").read_text() == "first"
    assert (tmp_path / ".adapter.0123abcd.old" / "notes.txt").read_text() == "keep"


def _writer(args: tuple[str, int]) -> str | None:
    final, k = args
    try:
        for j in range(40):
            write_folder(Path(final), f"{k}-{j}")
    except Exception as exc:  # noqa: BLE001 - the test counts every kind of failure
        return repr(exc)
    return None


def test_six_concurrent_writers_of_one_folder_never_fail(tmp_path):
    final = tmp_path / "shared"
    with multiprocessing.get_context("fork").Pool(6) as pool:
        errors = [e for e in pool.map(_writer, [(str(final), k) for k in range(6)]) if e]
    assert errors == []
    assert (final / "content.txt").read_text().endswith("-39")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # nothing left beside it


def test_a_user_folder_is_never_replaced(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(EvalkitError, match="holds files evalkit did not write"):
        write_folder(user, "x")
    assert (user / "notes.txt").read_text() == "keep" and len(list(tmp_path.iterdir())) == 1


def test_a_file_a_user_saved_into_a_folder_evalkit_wrote_keeps_it_from_being_replaced(tmp_path):
    final = tmp_path / "report"
    write_folder(final, "first")
    write_folder(final, "second")  # evalkit's own files only: replaced
    (final / "sub").mkdir()
    (final / "sub" / "notes.txt").write_text("keep")
    with pytest.raises(EvalkitError, match="holds 'sub', which evalkit did not write"):
        write_folder(final, "third")
    assert (final / "sub" / "notes.txt").read_text() == "keep" and (final / "content.txt").read_text() == "second"
    (final / "sub" / "notes.txt").unlink()
    (final / "sub").rmdir()
    (final / "__pycache__").mkdir()  # what importing a task folder's module leaves: not the user's
    (final / ".DS_Store").write_text("")  # what a file browser leaves
    write_folder(final, "fourth")
    assert (final / "content.txt").read_text() == "fourth"


def test_a_file_evalkit_writes_later_into_its_own_folder_is_listed(tmp_path):
    """`gate --junit demo/gate.xml` or a re-rendered report: evalkit's own, so the folder is still
    replaced by the next run."""
    final = tmp_path / "demo"
    write_folder(final, "first")
    write_text_atomic(final / "sub" / "gate.xml", "<testsuite/>")
    write_folder(final, "second")
    assert (final / "content.txt").read_text() == "second" and not (final / "sub").exists()


def test_a_damaged_cache_entry_is_dropped_and_computed_again(tmp_path, caplog):
    cache = ScoreCache("model", {"dtype": "float32"}, root=tmp_path)
    cache.put("choice", {"logprob_sum": [-1.0, -2.0], "n_tokens": [1, 1]})
    cache.put_array("along", np.ones((2, 3), dtype=np.float32))
    cache.save()
    array = next((cache.dir / "arrays").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:20])  # truncated
    entries = json.loads((cache.dir / "entries.json").read_text())
    entries["choice"]["value"]["logprob_sum"] = "not a list"  # edited
    (cache.dir / "entries.json").write_text(json.dumps(entries))
    again = ScoreCache("model", {"dtype": "float32"}, root=tmp_path)
    with caplog.at_level("WARNING", logger="evalkit"):
        assert again.get_array("along") is None and again.get("choice") is None
    assert len([r for r in caplog.records if "damaged score cache entry" in r.getMessage()]) == 2
    again.put("choice", {"logprob_sum": [-1.0, -2.0], "n_tokens": [1, 1]})
    again.put_array("along", np.ones((2, 3), dtype=np.float32))
    again.save()
    third = ScoreCache("model", {"dtype": "float32"}, root=tmp_path)
    assert third.get("choice") == {"logprob_sum": [-1.0, -2.0], "n_tokens": [1, 1]}
    assert third.get_array("along") is not None
    assert not list(cache.dir.rglob("*.tmp"))


def test_a_folder_of_suites_skips_hidden_files(tmp_path):
    """File browsers and editors leave '._tension.yaml' and '.#tension.yaml' beside a user's files."""
    from evalkit.files import yaml_files

    for name in ("tension.yaml", "._tension.yaml", ".#tension.yaml", "notes.txt"):
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07 not yaml")
    assert yaml_files(tmp_path) == [tmp_path / "tension.yaml"]

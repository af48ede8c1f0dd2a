"""`evalkit validate`: tell scene files from probe files and check each."""

from __future__ import annotations

from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.files import read_yaml_mapping
from evalkit.probe import load_suite
from evalkit.scene import load_scene


def _yaml_files(path: Path) -> list[Path]:
    if not path.exists():
        raise EvalkitError("no such file or folder", where=str(path))
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    return [path]


def validate_paths(paths: list[Path]) -> list[str]:
    """One 'ok' line per valid file; the first invalid file raises its one-line error."""
    lines = []
    for path in paths:
        for f in _yaml_files(path):
            data = read_yaml_mapping(f)
            if "kind" in data or "items" in data:
                suite = load_suite(f).spec
                lines.append(f"ok  {f}: {suite.kind} suite '{suite.suite}', {len(suite.items)} items")
            else:
                scene = load_scene(f)
                lines.append(f"ok  {f}: scene '{scene.id}'")
    return lines

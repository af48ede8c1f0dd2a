"""`evalkit validate`: tell scene files from probe files, check each, then check that every
scene's `expect` names a suite, item or cluster that exists among the probe files given."""

from __future__ import annotations

from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.files import read_yaml_mapping, yaml_files
from evalkit.inputs.scenes import Scene, load_scene
from evalkit.inputs.suites import LoadedSuite, load_suite


def check_expectations(scene: Scene, path: Path, suites: list[LoadedSuite]) -> None:
    by_name = {s.name: s for s in suites}
    for k, e in enumerate(scene.expect):
        where = f"{path} [expect.{k}]"
        suite = by_name.get(e.suite)
        if suite is None:
            raise EvalkitError(f"field 'suite': no suite named '{e.suite}' among the probe files", where=where)
        if e.item is not None and e.item not in suite.item_ids():
            raise EvalkitError(f"field 'item': suite '{e.suite}' has no item '{e.item}'", where=where)
        if e.cluster is not None and e.cluster not in suite.clusters():
            raise EvalkitError(f"field 'cluster': suite '{e.suite}' has no cluster '{e.cluster}'", where=where)


def validate_paths(paths: list[Path]) -> list[str]:
    """One 'ok' line per valid file; the first invalid file raises its one-line error."""
    lines, suites, scenes = [], [], []
    for path in paths:
        for f in yaml_files(path, "scene or probe"):
            data = read_yaml_mapping(f)
            if "kind" in data or "items" in data or "groups" in data:
                suite = load_suite(f)
                suites.append(suite)
                lines.append(f"ok  {f}: {suite.spec.kind} suite '{suite.name}', {len(suite.item_ids())} items")
            else:
                scene = load_scene(f)
                scenes.append((scene, f))
                lines.append(f"ok  {f}: scene '{scene.id}'")
    if suites:
        for scene, f in scenes:
            check_expectations(scene, f, suites)
    return lines

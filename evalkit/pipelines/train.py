"""`evalkit train`: one adapter per scene of a file or folder, or cumulative stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from evalkit.engine.base import load_base
from evalkit.errors import EvalkitError
from evalkit.files import check_replaceable, inside
from evalkit.inputs.scenes import load_scenes, scene_files
from evalkit.paths import adapters_folder
from evalkit.settings import TrainSettings
from evalkit.training.demo_base import ensure_demo_base
from evalkit.training.lora import train_adapter, train_stack

Log = Callable[[str], None]


def train(scene_path: Path, base_dir: Optional[Path], out: Optional[Path], stack: bool, settings: TrainSettings,
          log: Log = print) -> list[Path]:
    """Every input and output is checked before the base is loaded (or the demo base built)."""
    scenes = load_scenes(scene_path)
    files = [str(f.resolve()) for f in scene_files(scene_path)]
    if stack and not scene_path.is_dir():
        raise EvalkitError("--stack needs a folder of scenes", where=str(scene_path))
    if out is not None and len(scenes) > 1 and not stack:
        raise EvalkitError("--out names one adapter, but the folder holds several scenes", where=str(scene_path))
    if stack:
        root = out or adapters_folder() / "stack"
        outs = [inside(root, f"stack-{k:02d}-{s.id}") for k, s in enumerate(scenes, start=1)]
    else:
        outs = [out or inside(adapters_folder(), s.id) for s in scenes]
    for folder in outs:
        check_replaceable(folder, inputs=[scene_path])
    base = load_base(base_dir if base_dir is not None else ensure_demo_base(log=log))
    if stack:
        return train_stack(scenes, base, outs, settings, log=log)
    return [train_adapter([s], base, folder, settings, scene_paths=[f], log=log)
            for s, f, folder in zip(scenes, files, outs)]

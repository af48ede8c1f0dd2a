"""`evalkit train`: one adapter per scene of a file or folder, or cumulative stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from evalkit.engine.base import load_base
from evalkit.errors import EvalkitError
from evalkit.inputs.scenes import load_scenes, scene_files
from evalkit.paths import adapters_folder
from evalkit.settings import TrainSettings
from evalkit.training.lora import train_adapter, train_stack

Log = Callable[[str], None]


def train(scene_path: Path, base_dir: Path, out: Optional[Path], stack: bool, settings: TrainSettings,
          log: Log = print) -> list[Path]:
    scenes = load_scenes(scene_path)
    files = [str(f.resolve()) for f in scene_files(scene_path)]
    if stack and not scene_path.is_dir():
        raise EvalkitError("--stack needs a folder of scenes", where=str(scene_path))
    if out is not None and len(scenes) > 1 and not stack:
        raise EvalkitError("--out names one adapter, but the folder holds several scenes", where=str(scene_path))
    base = load_base(base_dir)
    if stack:
        return train_stack(scenes, base, out or adapters_folder() / "stack", settings, log=log)
    return [train_adapter([s], base, out or adapters_folder() / s.id, settings, scene_paths=[f], log=log)
            for s, f in zip(scenes, files)]

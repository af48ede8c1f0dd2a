"""`evalkit train`: one adapter per scene of a file or folder, or cumulative stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from evalkit.engine.base import load_base
from evalkit.errors import EvalkitError
from evalkit.files import check_replaceable, inside
from evalkit.inputs.scenes import load_scenes, scene_files
from evalkit.paths import adapters_folder
from evalkit.progress import progress_bar
from evalkit.settings import TrainSettings
from evalkit.training.demo_base import ensure_demo_base
from evalkit.training.lora import settings_for, train_adapter

Log = Callable[[str], None]


def train(scene_path: Path, base_dir: Optional[Path], out: Optional[Path], stack: bool,
          settings: Optional[TrainSettings] = None, command_line: Mapping[str, Any] = {},
          log: Log = print) -> list[Path]:
    """Every input and output is checked before the base is loaded (or the demo base built).
    `settings` replaces the recipe chosen by the base's size; `command_line` overrides any
    setting, a scene's own included (see training.lora.settings_for)."""
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
        check_replaceable(folder, inputs=[scene_path, *([base_dir] if base_dir is not None else [])], kind="adapter")
    base = load_base(base_dir if base_dir is not None else ensure_demo_base(log=log), log=log)
    trained = []
    for k, folder in enumerate(outs):
        members = scenes[: k + 1] if stack else [scenes[k]]
        with progress_bar(f"training {members[-1].id}", settings_for(members, base, settings, {},
                                                                     command_line)[0].steps) as advance:
            trained.append(train_adapter(members, base, folder, settings, command_line=command_line,
                                         scene_paths=None if stack else [files[k]], log=log,
                                         on_step=lambda step, steps, loss: advance(loss=loss)))
    return trained

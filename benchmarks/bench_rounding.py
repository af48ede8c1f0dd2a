"""How many of bf16's changed verdicts come from rounding the weights alone.

A bfloat16 run holds every weight rounded to 8 bits of mantissa: it evaluates a slightly
different model, whatever precision its arithmetic keeps. This runs evalkit in float32 on the
base with its weights rounded to bf16 and back (the output head left exact, as a bf16 run keeps
it), on the adapters of a `bench_run.py` work folder, with no score cache, and sets its verdicts
against that folder's float32 and bfloat16 runs of the same N:

  fp32 -> rounded   what rounding the weights does, with float32 arithmetic
  rounded -> bf16   what bf16 arithmetic adds on top

    .venv/bin/python benchmarks/bench_run.py --base smollm2 --sizes 5 --repeat 1 --work W   # and --dtype bfloat16
    .venv/bin/python benchmarks/bench_rounding.py --base smollm2 --work W --n 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_run import compare_verdicts


def round_weights(model) -> None:
    """Every weight to bf16 and back, except the output head, which gets an exact untied copy."""
    import torch

    head = model.get_output_embeddings()
    kept = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    with torch.no_grad():
        kept.weight.copy_(head.weight)
        if head.bias is not None:
            kept.bias.copy_(head.bias)
        model.config.tie_word_embeddings = False
        model.set_output_embeddings(kept)
        for param in model.parameters():
            if param is not kept.weight and param is not kept.bias:
                param.copy_(param.to(torch.bfloat16).float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="The base the work folder's adapters were built on.")
    parser.add_argument("--work", type=Path, required=True, help="A bench_run.py work folder.")
    parser.add_argument("--n", type=int, default=5, help="How many of its adapters (its runs of this N).")
    parser.add_argument("--suites", default=None, help="Suites folder (default: the real-model suites).")
    args = parser.parse_args()

    from evalkit.engine.base import load_base
    from evalkit.engine.runner import adapter_subject
    from evalkit.inputs.suites import load_suites
    from evalkit.paths import bundled
    from evalkit.pipelines.evaluate import evaluate_subjects, write_outputs
    from evalkit.settings import RunSettings

    base = load_base(Path(args.base))  # fingerprinted before rounding: the adapters' own base
    round_weights(base.model)
    subjects = [adapter_subject(a) for a in sorted((args.work / "adapters").iterdir())[:args.n]]
    suites = load_suites([Path(args.suites) if args.suites else bundled("probes") / "real"])
    runs = args.work / "runs"
    for record in evaluate_subjects(base, subjects, suites, RunSettings(), log=lambda _: None, use_cache=False):
        write_outputs(record, runs / f"rounded-n{args.n}" / record.run_id)
    fp32, rounded, bf16 = (runs / f"{name}-n{args.n}" for name in ("evalkit-float32", "rounded", "evalkit-bfloat16"))
    if fp32.is_dir():
        compare_verdicts(fp32, rounded, label="weights rounded to bf16, fp32 arithmetic, against fp32")
    if bf16.is_dir():
        compare_verdicts(rounded, bf16, label="bf16 against the rounded weights in fp32")


if __name__ == "__main__":
    main()

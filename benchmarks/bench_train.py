"""`evalkit train` on one real scene against the floor: a bare peft training loop in plain torch.

Both sides train the same LoRA (same base, rank, alpha, target modules, learning rate, batch of
windows, block, steps, seed and dtype) on the same scene tokens, each in its own process (so its
peak RSS is its own), after the same imports:

  evalkit  `evalkit.train` as the CLI runs it: load the base, tokenize the scene, the seeded
           training loop, the damage check (general English under base and base+adapter), save
           the adapter with its manifest and loss curve.
  floor    AutoModelForCausalLM + peft.get_peft_model + AdamW over random windows of the token
           stream, forward/backward/step and nothing else, then save_pretrained.

By default evalkit trains as the CLI does (the recipe with its early stops: the loss level and the
damage budget, whose checks run inside its loop) and the floor then runs the same number of steps;
`--steps N` fixes the steps for both and turns the early stops off. Each side runs with
an empty cache, so evalkit's damage check reads the base as well as the adapter, as it does for
the first adapter on a base (later ones find the base's reading in the cache). Reported per side: wall time (after
imports), tokens trained per second of wall time and of the loop alone, peak RSS, and the share
of wall time outside forward/backward/optimizer (loading, tokenizing, the damage check, saving).

    .venv/bin/python benchmarks/bench_train.py                       # SmolLM2, fp32 and bf16
    .venv/bin/python benchmarks/bench_train.py --dtypes bfloat16 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "evalkit" / "bundled" / "scenes" / "real" / "01-honesty.yaml"


def settings(args):
    from evalkit.training.lora import PRETRAINED_RECIPE

    if args.steps:
        return PRETRAINED_RECIPE.but(steps=args.steps, stop_loss=None, damage_budget=None, dtype=args.dtype)
    return PRETRAINED_RECIPE.but(dtype=args.dtype)


def side_evalkit(args) -> dict:
    import evalkit.training.lora as lora
    from evalkit.engine.base import load_base
    from evalkit.inputs.scenes import load_scene

    loop_seconds = []
    timed_loop = lora.train_loop

    steps_run = []

    def timing(*a, **k):
        start = time.perf_counter()
        try:
            losses = timed_loop(*a, **k)
            steps_run.append(len(losses))  # the steps run (the manifest counts those kept)
            return losses
        finally:
            loop_seconds.append(time.perf_counter() - start)

    lora.train_loop = timing  # the benchmark's only hook: time the loop inside evalkit's own call
    start = time.perf_counter()
    base = load_base(Path(args.base))
    out = Path(tempfile.mkdtemp()) / "adapter"
    lora.train_adapter([load_scene(SCENE)], base, out, settings(args), log=lambda _: None, reuse=False)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "evalkit.json").read_text())
    return {"seconds": wall, "loop_s": loop_seconds[0], "tokens_in_scene": manifest["training"]["tokens"],
            "final_loss": manifest["final_loss"], "steps": steps_run[0]}


def side_floor(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalkit.inputs.scenes import load_scene

    s = settings(args)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    ids = tokenizer(load_scene(SCENE).body.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids)
    torch.manual_seed(s.seed)
    model = get_peft_model(model, LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                             target_modules=args.targets, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=0.0)
    block = min(s.block, len(ids) - 1)
    model.train()
    loop_start = time.perf_counter()
    for _ in range(s.steps):
        starts = torch.randint(0, len(ids) - block, (s.batch_size,)).tolist()
        batch = torch.stack([data[i : i + block + 1] for i in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.dtype == "bfloat16"):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    loop = time.perf_counter() - loop_start
    model.save_pretrained(tempfile.mkdtemp())
    return {"seconds": time.perf_counter() - start, "loop_s": loop, "tokens_in_scene": len(ids),
            "final_loss": round(loss.item(), 5), "steps": s.steps}


SIDES = {"evalkit": side_evalkit, "floor": side_floor}


def child(args) -> None:
    import peft.tuners.lora  # noqa: F401 - both sides pay the same imports before the clock starts
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import evalkit.engine.base  # noqa: F401
    import evalkit.training.lora  # noqa: F401

    result = SIDES[args.child](args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result))


def run_child(side: str, dtype: str, args, targets: list[str], steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--base", args.base, "--dtype", dtype,
           "--steps", str(steps), "--targets", ",".join(targets)]
    # An empty cache: evalkit pays for reading the base in its damage check, as the first adapter on a base does.
    env = {**os.environ, "EVALKIT_CACHE": tempfile.mkdtemp(prefix="evalkit-bench-cache-")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} {dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2", help="A HF folder, a .gguf, or smollm2 (the default).")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=0,
                        help="Steps for both sides, no early stop (default: as many as evalkit's recipe runs).")
    parser.add_argument("--repeat", type=int, default=1, help="Runs per side; the fastest is kept.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--targets", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.targets = args.targets.split(",")
        return child(args)

    from evalkit.engine.adapters import lora_config
    from evalkit.engine.base import load_base
    from evalkit.engine.models import resolve_model

    args.base = str(resolve_model(Path(args.base), log=print))
    base = load_base(Path(args.base))
    s = settings(args)
    targets = sorted(lora_config(base, s).target_modules)
    steps = f"{s.steps} steps" if args.steps else f"the recipe's steps (at most {s.steps})"
    print(f"base {args.base}: {sum(p.numel() for p in base.model.parameters()) / 1e6:.0f}M parameters; "
          f"scene {SCENE.name}; LoRA r={s.rank} on {','.join(targets)}; {steps} x {s.batch_size} x "
          f"{s.block} tokens; lr {s.learning_rate}")
    del base
    print(f"{'dtype':<9} {'side':<8} {'wall s':>7} {'loop s':>7} {'tok/s wall':>11} {'tok/s loop':>11} "
          f"{'outside':>8} {'RSS MiB':>8} {'loss':>6}")
    results = {}
    for dtype in args.dtypes.split(","):
        for _ in range(args.repeat):
            ran = args.steps
            for side in SIDES:  # evalkit first: without --steps the floor runs as many steps as it did
                row = run_child(side, dtype, args, targets, ran)
                ran = row["steps"]
                if (dtype, side) not in results or row["seconds"] < results[(dtype, side)]["seconds"]:
                    results[(dtype, side)] = row
        for side in SIDES:
            r = results[(dtype, side)]
            tokens = r["steps"] * s.batch_size * s.block
            print(f"{dtype:<9} {side:<8} {r['seconds']:>7.1f} {r['loop_s']:>7.1f} {tokens / r['seconds']:>11.0f} "
                  f"{tokens / r['loop_s']:>11.0f} {1 - r['loop_s'] / r['seconds']:>8.0%} "
                  f"{r['peak_rss_mib']:>8.0f} {r['final_loss']:>6.3f}", flush=True)
        e, f = results[(dtype, "evalkit")], results[(dtype, "floor")]
        per_step = {k: (r["seconds"] / r["steps"], r["loop_s"] / r["steps"]) for k, r in (("e", e), ("f", f))}
        print(f"{dtype}: {e['steps']} steps; evalkit / floor tokens per second: wall "
              f"{per_step['f'][0] / per_step['e'][0]:.2f}, loop {per_step['f'][1] / per_step['e'][1]:.2f}")


if __name__ == "__main__":
    main()

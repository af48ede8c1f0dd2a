"""evalkit against the naive lm-eval loop and against the compute floor, on base + N adapters.

Builds, inside the benchmark, a Llama of about 26M parameters (hidden 512, 8 layers, the demo's
byte-level BPE) and 11 LoRA adapters (rank 8, seeded non-zero B so every adapter changes the
model), then runs all shipped suites (probes/) four ways, each in its own process so peak RSS
is that side's own:

  evalkit      `evalkit run` on N adapters, cold (an empty cache): one load, adapters swapped,
               shared-prefix scoring, KL/NLL along the reference's continuation, reports written.
  naive        one `lm_eval.simple_evaluate(model="hf", model_args={pretrained, peft})` per model
               (the base and each adapter) on the exported tasks: each loads its model.
  floor        bare torch: one load; each prompt computed once with its options as branches after
               it (one packed row, only the needed positions through the output head); greedy
               generation with a KV cache (the reference's next-token distributions taken from
               its own generation); each subject's distributions along the reference's
               continuation (what KL needs), the same way.
  incremental  an 11th adapter added to the N = 10 set evalkit has already scored.

Every side uses the same dtype, batch size, device and threads. Times are wall-clock seconds measured
inside each process after the libraries are imported (imports cost every side the same ~5 s);
each side runs --repeat times, interleaved with the others, and the fastest run is kept
(this machine's timings wander by 10-20% between runs).
"tok/s" is the floor's token work (unique prompt + option tokens, generated tokens, tokens
scored along the reference's continuation) divided by that side's time.

    .venv/bin/python benchmarks/bench_run.py                 # N = 1, 5, 10 in fp32 (~8 min)
    .venv/bin/python benchmarks/bench_run.py --sizes 10 --dtype bfloat16
    python benchmarks/bench_run.py --base smollm2 --sizes 1,5 --repeat 1 --device cuda   # on a GPU
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
SEED = 0
ADAPTERS = 11
GEN_KEYS = ("until", "max_new_tokens")


# --- building the model and adapters (once, outside every timing) ---

def base_dir(work: Path, args) -> Path:
    return Path(args.base) if args.base else work / "base"


def build(work: Path, args) -> None:
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from evalkit.engine.adapters import lora_config
    from evalkit.engine.base import load_base
    from evalkit.record import MANIFEST_NAME, AdapterManifest, BaseRef, LoraRef, write_manifest
    from evalkit.settings import TrainSettings
    from evalkit.training import world
    from evalkit.training.demo_base import train_tokenizer

    base_dir = Path(args.base) if args.base else work / "base"
    if not (base_dir / "config.json").is_file():
        tokenizer = train_tokenizer(world.corpus(2000, seed=SEED), vocab_size=1024)
        eos = tokenizer.eos_token_id
        torch.manual_seed(SEED)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                             max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = eos
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    base = load_base(base_dir)
    for k in range(ADAPTERS):
        out = work / "adapters" / f"a{k:02d}"
        if (out / MANIFEST_NAME).is_file():
            continue
        settings = TrainSettings(seed=k)
        torch.manual_seed(k)  # lora_A's initial draw: the same adapters on every machine
        peft_model = get_peft_model(base.model, lora_config(base, settings))
        generator = torch.Generator().manual_seed(1000 + k)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0 (no change); a trained adapter has B != 0
                param.data = torch.randn(param.shape, generator=generator) * 0.05
        peft_model.save_pretrained(str(out))
        write_manifest(AdapterManifest(
            evalkit_version="bench", kind="adapter", key=f"bench-{k}", scenes=[],
            base=BaseRef(path=base.path, fingerprint=base.fingerprint, model_type=base.model_type),
            lora=LoraRef(r=settings.rank, alpha=settings.alpha, dropout=0.0, target_modules=[],
                         init="random B (benchmark)"),
            training={"seed": k, "steps": 0}, packages={}, created="",
        ), out)
        base.model = peft_model.unload()
    from evalkit.engine.export import export_tasks
    from evalkit.inputs.suites import load_suites

    if not (work / "tasks").is_dir():
        export_tasks(load_suites([Path(args.suites)]), work / "tasks")


def adapter_dirs(work: Path) -> list[Path]:
    return sorted((work / "adapters").iterdir())


# --- the sides; each runs in its own process and returns its measurements ---

def side_evalkit(work: Path, n: int, args) -> dict:
    from evalkit.engine import packing_check
    from evalkit.inputs.suites import load_suites
    from evalkit.pipelines.evaluate import evaluate, write_outputs
    from evalkit.settings import RunSettings

    adapters = adapter_dirs(work)
    chosen = [adapters[-1]] if args.side == "incremental" else adapters[:n]
    settings = RunSettings(batch_size=args.batch_size, dtype=args.dtype, device=args.device)
    suites = [Path(args.suites)]
    load_suites(suites)  # parsing the YAML is not what is measured
    start = time.perf_counter()
    # Kept (per dtype and N) so a bf16 run's verdicts can be set against fp32's.
    out = work / "runs" / f"{args.side}-{args.dtype}-n{n}"
    for record in evaluate(chosen, [], base_dir(work, args), suites, settings, log=lambda _: None):
        write_outputs(record, out / record.run_id)
    seconds = time.perf_counter() - start
    # Whether shared-prefix packing passed its check against lm-eval here (else evalkit scored unpacked).
    checks = list(packing_check.verdicts().values())
    return {"seconds": seconds, "packed": all(checks) if checks else None}


def side_naive(work: Path, n: int, args) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = sorted(p.stem for p in (work / "tasks").glob("*.yaml"))
    models = [None, *adapter_dirs(work)[:n]] if args.side == "naive" else [adapter_dirs(work)[-1]]
    start = time.perf_counter()
    for adapter in models:
        model_args = {"pretrained": str(base_dir(work, args)), "dtype": args.dtype}
        if adapter is not None:
            model_args["peft"] = str(adapter)
        lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=names, device=args.device, batch_size=args.batch_size,
            task_manager=TaskManager(include_path=str(work / "tasks"), include_defaults=False),
            bootstrap_iters=0, log_samples=True, verbosity="ERROR", random_seed=SEED, numpy_random_seed=SEED,
            torch_random_seed=SEED, fewshot_random_seed=SEED,
        )
    return {"seconds": time.perf_counter() - start}


def side_floor(work: Path, n: int, args) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir(work, args)))
    items, prompts, gen = floor_requests(tokenizer, Path(args.suites))
    clock = _clock(args.device)
    start = clock()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir(work, args)), dtype=getattr(torch, args.dtype))
    for k, path in enumerate(adapter_dirs(work)[:n]):
        if k == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=path.name)
        else:
            model.load_adapter(str(path), adapter_name=path.name)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()  # peft loads adapters in fp32
    timings = {"choices": 0.0, "generate": 0.0, "along": 0.0}
    reference_gens = None
    for k in range(n + 1):
        if k == 0:
            context = model.disable_adapter() if n else _nothing()
        else:
            model.set_adapter(adapter_dirs(work)[k - 1].name)
            context = _nothing()
        with context, torch.no_grad():
            t = clock()
            floor_choices(model, items, args.batch_size)
            timings["choices"] += clock() - t
            t = clock()
            gens = floor_generate(model, tokenizer, prompts, gen, args.batch_size, keep_logits=k == 0)
            timings["generate"] += clock() - t
            if k == 0:
                reference_gens = gens
            else:
                t = clock()
                floor_along(model, sorted(prompts, key=len), reference_gens, args.batch_size)
                timings["along"] += clock() - t
    return {"seconds": clock() - start, **{f"{k}_s": round(v, 2) for k, v in timings.items()}}


def _clock(device: str):
    """Wall-clock seconds, after the GPU has finished what was queued (CUDA runs asynchronously)."""
    import torch

    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def floor_requests(tokenizer, suites: Path):
    """(context ids, [continuation ids per option]) per choice item, prompts to continue, and
    the continuation suite's generation settings; split as lm-eval splits them."""
    from evalkit.engine.tasks import continuation_tokens
    from evalkit.inputs.suites import load_suites

    items, prompts, gen = [], [], None
    for s in load_suites([suites]):
        for c in s.spec.choices():
            items.append((tokenizer(c.prompt)["input_ids"],
                          [continuation_tokens(tokenizer, c.prompt, s.spec.delimiter + o) for o in c.options]))
        generation = s.spec.generation()
        if generation is not None:
            prompts += [tokenizer(i.prompt)["input_ids"] for i in generation.items]
            gen = {"until": list(generation.until), "max_new_tokens": generation.max_new_tokens}
    return items, prompts, gen


def token_work(tokenizer, suites: Path) -> dict:
    items, prompts, gen = floor_requests(tokenizer, suites)
    choice = sum(len(ctx) + sum(len(c) - 1 for c in conts) for ctx, conts in items)
    naive = sum(len(ctx) * len(conts) + sum(len(c) - 1 for c in conts) for ctx, conts in items)
    prompt = sum(len(p) for p in prompts)
    return {"choice_unique": choice, "choice_naive": naive, "prompts": prompt,
            "generated_max": len(prompts) * gen["max_new_tokens"]}


def _left_pad(seqs, pad):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    return ids, mask


def floor_forward(model, rows, batch_size: int):
    """Log-softmax at the positions each entry asks for. An entry is (prompt, [branch tokens...],
    positions wanted): the prompt once, each branch after it, seeing the prompt and itself.
    Entries share rows of max(longest, 128) tokens, first-fit decreasing, so rows are not
    padding; each forward takes as many tokens as batch_size rows of the longest entry."""
    import torch

    sizes = [len(p) + sum(len(b) for b in branches) for p, branches, _ in rows]
    width = max(max(sizes), 128)
    bins, room = [], []
    for i in sorted(range(len(rows)), key=lambda i: -sizes[i]):
        at = next((b for b, free in enumerate(room) if free >= sizes[i]), None)
        if at is None:
            bins.append([])
            room.append(width)
            at = len(bins) - 1
        bins[at].append(rows[i])
        room[at] -= sizes[i]
    per_forward = max(1, batch_size * max(sizes) // width)
    out = []
    first = next(model.parameters())
    dtype, device = first.dtype, first.device
    for start in range(0, len(bins), per_forward):
        batch = bins[start:start + per_forward]
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        segment = torch.full((len(batch), width), -1)  # 2 * entry + (0 prompt, k branch k), -1 padding
        keep = []
        for r, entries in enumerate(batch):
            at = 0
            for e, (prompt, branches, wanted) in enumerate(entries):
                tokens = list(prompt) + [t for b in branches for t in b]
                ids[r, at:at + len(tokens)] = torch.tensor(tokens)
                positions[r, at:at + len(tokens)] = torch.tensor(
                    list(range(len(prompt))) + [len(prompt) + i for b in branches for i in range(len(b))])
                segment[r, at:at + len(tokens)] = torch.tensor(
                    [e * 1000] * len(prompt) + [e * 1000 + k + 1 for k, b in enumerate(branches) for _ in b])
                keep += [r * width + at + p for p in wanted]
                at += len(tokens)
        q, k = segment[:, :, None], segment[:, None, :]
        same_entry = (q >= 0) & (q // 1000 == k // 1000)
        visible = torch.ones(width, width, dtype=torch.bool).tril() & same_entry & ((k % 1000 == 0) | (k == q))
        visible |= torch.eye(width, dtype=torch.bool)
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[:, None]
        columns = sorted({p % width for p in keep})
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       use_cache=False, logits_to_keep=torch.tensor(columns, device=device)).logits
        out.append(torch.log_softmax(logits.float(), dim=-1))
    return out


def floor_choices(model, items, batch_size: int) -> None:
    """Each prompt once with every option as a branch after it (the options' last tokens are only
    predicted, never fed)."""
    rows = []
    for ctx, conts in items:
        wanted, at = [len(ctx) - 1], len(ctx)
        for c in conts:
            wanted += list(range(at, at + len(c) - 1))
            at += len(c) - 1
        rows.append((ctx, [c[:-1] for c in conts], wanted))
    floor_forward(model, rows, batch_size)


def floor_generate(model, tokenizer, prompts, gen, batch_size: int, keep_logits: bool):
    """Greedy generation with the KV cache; with keep_logits, the next-token distributions too."""
    import torch

    # Stopping on every token whose text holds a stop string is what lm-eval's `until` does,
    # without decoding every row at every step.
    stop_ids = [i for i in range(len(tokenizer))
                if any(u in tokenizer.decode([i]) for u in gen["until"])] + [tokenizer.eos_token_id]
    texts = []
    order = sorted(prompts, key=len)
    for start in range(0, len(order), batch_size):
        ids, mask = _left_pad(order[start:start + batch_size], tokenizer.eos_token_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        result = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen["max_new_tokens"],
                                do_sample=False, eos_token_id=stop_ids, pad_token_id=tokenizer.eos_token_id,
                                return_dict_in_generate=True, output_logits=keep_logits)
        if keep_logits:
            [torch.log_softmax(step.float(), dim=-1) for step in result.logits]
        texts += [list(row[ids.shape[1]:]) for row in result.sequences.tolist()]
    return texts


def floor_along(model, prompts, continuations, batch_size: int) -> None:
    """Each subject's full next-token distributions along the reference's continuation."""
    rows = [(p, [c[:-1]], list(range(len(p) - 1, len(p) + len(c) - 1))) for p, c in zip(prompts, continuations) if c]
    floor_forward(model, rows, batch_size)


SIDES = {"evalkit": side_evalkit, "naive": side_naive, "floor": side_floor, "incremental": side_evalkit,
         "naive-one": side_naive}


def child(args) -> None:
    # Every side pays the same imports before its clock starts (transformers and peft import
    # lazily, so the modules a Llama with LoRA needs are named here).
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401
    import peft.tuners.lora  # noqa: F401
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import evalkit.engine.runner  # noqa: F401

    if args.device.startswith("cuda"):  # CUDA's start-up (a second or two) is not any side's work
        torch.zeros(1, device=args.device)
        torch.cuda.synchronize(args.device)
    work = Path(args.work)
    result = SIDES[args.side](work, args.n, args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(args.device) / 2**20)
        result["reserved_gpu_mib"] = round(torch.cuda.max_memory_reserved(args.device) / 2**20)
    print("RESULT " + json.dumps(result))


def run_child(work: Path, side: str, n: int, args, cache: Path) -> dict:
    env = {**os.environ, "EVALKIT_CACHE": str(cache)}
    cmd = [sys.executable, __file__, "--child", side, "--n", str(n), "--work", str(work),
           "--dtype", args.dtype, "--batch-size", str(args.batch_size), "--suites", args.suites,
           "--device", args.device]
    if args.base:
        cmd += ["--base", args.base]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for a GPU.")
    parser.add_argument("--repeat", type=int, default=2, help="Runs per side; the fastest is kept.")
    parser.add_argument("--incremental", action=argparse.BooleanOptionalAction, default=True,
                        help="Also time an adapter added to the largest N's set (and one naive lm-eval run).")
    parser.add_argument("--work", default=None, help="Model and adapters folder (default: a new temp folder).")
    parser.add_argument("--base", default=None,
                        help="A real base instead of the built one: a HF folder, a .gguf, or smollm2.")
    parser.add_argument("--suites", default=None,
                        help="Suites folder (default: probes/, or the real-model suites with --base).")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("RUNS_A", "RUNS_B"),
                        help="Only compare the verdicts of two folders of run records of the same adapters.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        return child(args)
    if args.compare:
        return compare_verdicts(*args.compare, label=f"{args.compare[1]} against {args.compare[0]}")

    from transformers import AutoTokenizer

    from evalkit.engine.models import resolve_model
    from evalkit.paths import bundled

    if args.base:
        args.base = str(resolve_model(Path(args.base), log=print))
    args.suites = str(args.suites or (bundled("probes") / "real" if args.base else ROOT / "probes"))
    work = Path(args.work or tempfile.mkdtemp(prefix="evalkit-bench-"))
    build(work, args)
    work_tokens = token_work(AutoTokenizer.from_pretrained(str(base_dir(work, args))), Path(args.suites))
    sizes = [int(s) for s in args.sizes.split(",")]
    model = args.base or "Llama, 26M parameters"
    print(f"model: {model}, {args.dtype}, batch {args.batch_size}, {args.device}; suites: {args.suites} "
          f"(choice tokens {work_tokens['choice_naive']} unpacked, {work_tokens['choice_unique']} unique; "
          f"{work_tokens['prompts']} prompt tokens to continue, up to {work_tokens['generated_max']} generated)")
    rows: dict[tuple[str, int], dict] = {}
    for n in sizes:
        for _ in range(args.repeat):  # sides interleaved, so a slow spell of the machine hits all of them
            cache = Path(tempfile.mkdtemp(prefix="evalkit-bench-cache-"))  # cold: an empty cache
            incremental = args.incremental and n == max(sizes)
            sides = ["evalkit", "naive", "floor"] + (["incremental", "naive-one"] if incremental else [])
            for side in sides:  # incremental reuses the cache the cold evalkit run just filled
                keep(rows, (side, n), run_child(work, side, n, args, cache))
        for side in ("evalkit", "naive", "floor"):
            row = rows[(side, n)]
            gpu = (f"  peak GPU {row['peak_gpu_mib']:6.0f} MiB ({row['reserved_gpu_mib']:.0f} reserved)"
                   if "peak_gpu_mib" in row else "")
            print(f"  N={n:>2} {side:<8} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_mib']:6.0f} MiB{gpu}  "
                  f"{_extra(row)}", flush=True)
    report(rows, sizes, work_tokens)
    compare_dtypes(work, max(sizes))


def keep(rows: dict, key: tuple[str, int], result: dict) -> None:
    """The fastest of the repeats (the least disturbed by other load), and the largest peak memory."""
    best = rows.get(key)
    if best is None:
        rows[key] = result
        return
    peaks = {k: max(best[k], result[k]) for k in ("peak_rss_mib", "peak_gpu_mib", "reserved_gpu_mib") if k in best}
    if result["seconds"] < best["seconds"]:
        rows[key] = result
    rows[key].update(peaks)


def _extra(row: dict) -> str:
    parts = [f"{k.removesuffix('_s')} {v} s" for k, v in row.items() if k.endswith("_s")]
    if "packed" in row:
        parts.append({True: "packed", False: "UNPACKED: the packing check failed",
                      None: "packing not checked"}[row["packed"]])
    return ("(" + ", ".join(parts) + ")") if parts else ""


def report(rows: dict, sizes: list[int], work_tokens: dict) -> None:
    per_model = work_tokens["choice_unique"] + work_tokens["prompts"] + work_tokens["generated_max"]
    # On a GPU the model lives in GPU memory: that peak is the one that grows with N.
    memory, label = (("peak_gpu_mib", "GPU MiB") if "peak_gpu_mib" in rows[("evalkit", sizes[0])]
                     else ("peak_rss_mib", "RSS MiB"))
    print()
    print(f"{'N':>3} {'evalkit s':>10} {'naive s':>9} {'floor s':>9} {'naive/evalkit':>14} {'evalkit/floor':>14} "
          f"{'evalkit tok/s':>14} {'naive tok/s':>12} {label:>8}")
    for n in sizes:
        e, v, f = (rows[(s, n)]["seconds"] for s in ("evalkit", "naive", "floor"))
        tokens = per_model * (n + 1)
        print(f"{n:>3} {e:>10.2f} {v:>9.2f} {f:>9.2f} {v / e:>14.2f} {e / f:>14.2f} {tokens / e:>14.0f} "
              f"{tokens / v:>12.0f} {rows[('evalkit', n)][memory]:>8.0f}")
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        for side in ("evalkit", "naive", "floor"):
            slope = (rows[(side, hi)]["seconds"] - rows[(side, lo)]["seconds"]) / (hi - lo)
            print(f"{side}: {slope:.2f} s per added adapter (N={lo}..{hi}); "
                  f"N=5 off the line by {_off_line(rows, side, sizes):+.2f} s")
        print(f"peak {label.split()[0]} evalkit N={hi} / N={lo}: "
              f"{rows[('evalkit', hi)][memory] / rows[('evalkit', lo)][memory]:.2f}")
    hi = max(sizes)
    floor = rows[("floor", hi)]
    # One adapter's own floor: its share of the floor's choices and generation, and its KL forward.
    own = (floor["choices_s"] + floor["generate_s"]) / (hi + 1) + floor["along_s"] / hi
    if len(sizes) > 1:
        lo = min(sizes)
        slope = (rows[("evalkit", hi)]["seconds"] - rows[("evalkit", lo)]["seconds"]) / (hi - lo)
        print(f"an added adapter: evalkit {slope:.2f} s (N={lo}..{hi}); its own floor (choices, generation, KL "
              f"forward) {own:.2f} s; ratio {slope / own:.2f}")
    if ("incremental", hi) not in rows:
        return
    inc, one = rows[("incremental", hi)]["seconds"], rows[("naive-one", hi)]["seconds"]
    loop = rows[("naive", hi)]["seconds"] + one  # the naive loop over base + N + 1 models
    print(f"incremental (adapter {hi + 1} added to N={hi}): evalkit {inc:.2f} s; one naive lm-eval run {one:.2f} s "
          f"({one / inc:.2f}x); naive loop over all {hi + 2} models {loop:.2f} s ({loop / inc:.1f}x)")


def compare_dtypes(work: Path, n: int) -> None:
    """bf16 verdicts against fp32's, once both runs of N adapters are in `work`."""
    runs = [work / "runs" / f"evalkit-{d}-n{n}" for d in ("float32", "bfloat16")]
    if all(folder.is_dir() for folder in runs):
        compare_verdicts(*runs, label=f"bf16 against fp32 (N={n})")


def compare_verdicts(first: Path, second: Path, label: str, near: float = 0.01) -> None:
    """The verdicts of two runs of the same adapters (folders of run records, e.g. two dtypes or
    two machines): every effect whose verdict (significant or not, and the sign) differs, and how
    many of those `first` put within `near` of alpha."""
    from evalkit.record import read_record

    same = differ = differ_near = near_alpha = 0
    largest = 0.0
    for folder in sorted(first.iterdir()):
        a, b = read_record(folder / "results.json"), read_record(second / folder.name / "results.json")
        alpha = a.stats.alpha
        others = {(f.suite, f.metric, f.scope): f for f in b.effects}
        for e in a.effects:
            f = others[(e.suite, e.metric, e.scope)]
            if e.q_value is None:
                continue
            largest = max(largest, abs(e.mean_diff - f.mean_diff))
            close = abs(e.q_value - alpha) <= near
            near_alpha += close
            if (e.significant, e.significant and e.mean_diff > 0) == (f.significant, f.significant and f.mean_diff > 0):
                same += 1
            else:
                differ += 1
                differ_near += close
                print(f"  differs: {folder.name} {e.suite}/{e.metric} [{e.scope}]: q {e.q_value:.4f} "
                      f"{e.mean_diff:+.3f}, then q {f.q_value} {f.mean_diff:+.3f}")
    print(f"{label}: {same} of {same + differ} tested effects have the same verdict; {differ} differ, "
          f"{differ_near} of them with q within {near} of alpha ({near_alpha} effects lie that close in all); "
          f"largest change of an effect's mean difference {largest:.4f}")


def _off_line(rows: dict, side: str, sizes: list[int]) -> float:
    lo, hi = min(sizes), max(sizes)
    mids = [s for s in sizes if lo < s < hi]
    if not mids:
        return 0.0
    mid = mids[0]
    a, b = rows[(side, lo)]["seconds"], rows[(side, hi)]["seconds"]
    return rows[(side, mid)]["seconds"] - (a + (b - a) * (mid - lo) / (hi - lo))


if __name__ == "__main__":
    main()

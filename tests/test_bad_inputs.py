"""Bad input through the real command line, in-process (typer's CliRunner): one line on stderr
naming the file (item, field), exit code 2, no traceback, nothing written, no user file touched,
nothing outside the named output. One row per case: adding a case is one line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.files import atomic_directory

ROOT = Path(__file__).resolve().parent.parent
TENSION = ROOT / "probes" / "tension.yaml"

# Files the cases refer to, written into the case's temporary folder.
FILES = {
    "special-only.yaml": "id: special\ntitle: T\ntext: '<|endoftext|><|endoftext|>'\n",
    "repeated-item.yaml": "suite: t\nkind: tension\nitems:\n  - {id: a, prompt: 'She decided to', options: [stay, go]}\n"
                          "  - {id: b, prompt: 'She decided\u200b to', options: [stay, go]}\n",
    "lookalike-options.yaml": "suite: t\nkind: tension\nitems:\n  - {id: a, prompt: 'She decided to', "
                              "options: [caf\u00e9, \"cafe\\u0301\"]}\n",
    "lookalike-clusters.yaml": "suite: t\nkind: tension\nitems:\n"
                               "  - {id: a, cluster: found, prompt: 'She decided to', options: [stay, go]}\n"
                               "  - {id: b, cluster: \"found\\u200b\", prompt: 'He chose to', options: [stay, go]}\n",
    "chat-no-role.yaml": "id: s\ntitle: T\nturns:\n  - {content: hello}\n  - {role: assistant, content: hi}\n",
    "chat-bad-role.yaml": "id: s\ntitle: T\nturns:\n  - {role: User, content: hello}\n  - {role: assistant, content: hi}\n",
    "blank-cluster.yaml": "suite: t\nkind: tension\nitems:\n  - {id: a, cluster: '   ', prompt: 'She decided to', options: [stay, go]}\n",
    "text-bomb.yaml": "suite: t\nkind: tension\nbig: &big '" + "x" * 100_000 + "'\nitems: [" + "*big, " * 300 + "]\n",
    "double-space.yaml": "suite: t\nkind: tension\nitems:\n  - {id: a, prompt: 'She decided to', options: [' stay.', ' go.']}\n",
    "few-prompts.txt": "one\ntwo\nthree\n",
    "repeated-prompts.txt": "The miller walked to the river.\n" * 25 + "\u200b\n",
    "long-prompts.txt": "".join(f"Prompt {k} of the bank.\n" for k in range(25)) + "word " * 400 + "\n",
    "no-text.yaml": "id: x\ntitle: T\n",
    "unknown-key.yaml": "id: x\ntitle: T\ntext: hi\nmood: grim\n",
    "not-yaml.yaml": "id: x\ntitle: [T\ntext: : :\n",
    "long.yaml": "suite: long\nkind: tension\nitems:\n  - {id: too-long, prompt: '" + "the bread " * 200
                 + "', options: [a, b]}\n",
    "dupes.yaml": "suite: d\nkind: tension\nitems: [{id: a, prompt: P, options: [x, y]}, "
                  "{id: a, prompt: Q, options: [x, y]}]\n",
    "riddles.yaml": "suite: r\nkind: riddles\nitems: []\n",
    "twice-text.yaml": "id: x\ntitle: T\ntext: one\ntext: two\n",
    "twice-items.yaml": "suite: s\nkind: tension\nitems: [{id: a, prompt: P, options: [x, y]}]\nitems: []\n",
    "zero-width.yaml": "id: x\ntitle: T\ntext: \"\\u200b\\u200b \\ufeff\"\n",
    "lr-inf.yaml": "id: x\ntitle: T\ntext: hi\ntraining: {learning_rate: .inf}\n",
    "seed-huge.yaml": "id: x\ntitle: T\ntext: hi\ntraining: {seed: 100000000000000000000000000}\n",
    "blank-prompt.yaml": "suite: s\nkind: tension\nitems: [{id: a, prompt: ' ', options: [x, y]}]\n",
    "empty-stop.yaml": "suite: s\nkind: continuation\nuntil: ['']\nitems: [{id: a, prompt: P}]\n",
    "long-id.yaml": "id: " + "x" * 300 + "\ntitle: T\ntext: hi\n",
    "policy-text-metric.yaml": "checks: [{suite: tension, metric: winner_name, worse: higher, margin: 0}]\n",
    "policy-twice.yaml": "alpha: 0.05\nalpha: 0.5\nchecks: [{suite: tension, metric: entropy, worse: higher, margin: 0}]\n",
    "bad-role.yaml": "id: x\ntitle: T\nturns:\n  - {role: narrator, content: hello}\n",
    "not-a-model.gguf": "GGUF? no: just some text\n",
    "policy-ok.yaml": "checks: [{suite: tension, metric: entropy, worse: higher, margin: 0.1}]\n",
    "policy-yes-key.yaml": "yes: 1\nchecks: [{suite: tension, metric: entropy, worse: higher, margin: 5e-2}]\n",
    "policy-other-suite.yaml": "checks: [{suite: consistency, metric: agreement, worse: lower, margin: 0}]\n",
    "deep.yaml": "id: x\ntitle: T\ntext: " + "[" * 2000 + "]" * 2000 + "\n",
    "list-key.yaml": "id: x\ntitle: T\n[a, b]: c\ntext: hi\n",
    "bad-float.yaml": "id: x\ntitle: T\ntext: hi\ntraining: {learning_rate: !!float hi}\n",
    "kind-list.yaml": "suite: s\nkind: [tension]\nitems: [{id: a, prompt: P, options: [x, y]}]\n",
    "id-list.yaml": "suite: s\nkind: tension\nitems: [{id: [a], prompt: P, options: [x, y]}]\n",
    "alias-bomb.yaml": "suite: s\nkind: tension\nfills: {w: [x]}\ntemplates:\n  - id: t\n    prompt: 'P {w}'\n"
                       "    options: [x, y]\n    a0: &a0 [l, l, l, l, l, l, l, l, l, l]\n"
                       + "".join(f"    a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]\n" for k in range(1, 9)),
    "policy-inf-margin.yaml": "checks: [{suite: tension, metric: entropy, worse: higher, margin: .inf}]\n",
    "policy-text-margin.yaml": "checks: [{suite: tension, metric: entropy, worse: higher, margin: '0.1'}]\n",
    "chat-no-assistant.yaml": "id: x\ntitle: T\nturns:\n  - {role: user, content: hello}\n",
    "surrogate.yaml": "id: x\ntitle: T\ntext: \"a \\ud800 b\"\n",
    "same-options.yaml": "suite: s\nkind: tension\nitems: [{id: a, prompt: P, options: [stay, go, stay]}]\n",
    "same-poles.yaml": "suite: s\nkind: novel_axis\nitems: [{id: a, axis: x, prompt: P, pole_a: up, pole_b: up}]\n",
    "fills-bomb.yaml": "suite: s\nkind: tension\nfills: {" + ", ".join(f"f{k}: [a, b, c, d, e, f, g, h, i, j]"
                                                               for k in range(9))
                       + "}\ntemplates:\n  - {id: t, prompt: '" + " ".join(f"{{f{k}}}" for k in range(9))
                       + "', options: [x, y]}\n",
}

PLAN = "name: p\nscenes: [{scenes}]\nsuites: [{tension}]\nstacks: {{cumulative: false, leave_one_out: false{named}}}\n"
PLANS = {
    "plan-traversal.yaml": ", named: {'../../../../x/baselines/scene3': [honesty]}",
    "plan-absolute.yaml": ", named: {'/tmp/evil': [honesty]}",
    "plan-reuses-scene-id.yaml": ", named: {honesty: [courage]}",
    "plan-stack-label.yaml": ", named: {stack-02: [honesty]}",
    "plan-empty-stack.yaml": ", named: {nothing: []}",
}

# (arguments, a fragment of the one error line). Placeholders: {tmp} the case's folder, {out} an
# output folder that must not appear, {adapter} a trained adapter, {base} its base, {other} another
# base, {tension} the shipped tension suite, {bad_weights} / {broken_ckpt} damaged copies.
CASES = [
    ("run --adapter {adapter} --suite {tension} --executor spark --out {out}", "--executor 'spark': expected 'local' or 'ray'"),
    ("run --adapter {adapter} --executor ray --workers 0 --out {out}", "--workers 0: Input should be greater than or equal to 1"),
    ("run --adapter {adapter} --executor ray --ray-address nowhere --out {out}", "--ray-address 'nowhere': is not HOST:PORT"),
    ("run --adapter {adapter} --base {base} --suite {tension} --executor ray --ray-address 127.0.0.1:1 --out {out}", "--ray-address '127.0.0.1:1': no Ray cluster answers there"),
    ("run --adapter {adapter} --suite {tension} --workers 4 --out {out}", "--workers 4: goes with --executor ray"),
    ("run --adapter {adapter} --suite {tension} --ray-address auto --out {out}", "--ray-address 'auto': goes with --executor ray"),
    ("run --adapter {adapter} --suite {tension} --device cuda:\u0661 --out {out}", "is not cpu or cuda[:N]"),
    ("run --adapter {adapter} --device cuda --executor ray --out {out}", "--executor 'ray': runs its workers on CPUs"),
    ("run --adapter {adapter} --device tpu --out {out}", "--device 'tpu': is not cpu or cuda"),
    ("run --adapter {adapter} --test wilcox --out {out}", "--test 'wilcox': expected 'wilcoxon', 't' or 'permutation'"),
    ("run --adapter {adapter} --dtype float16 --out {out}", "--dtype 'float16': expected 'float32' or 'bfloat16'"),
    ("run --adapter {adapter} --alpha 2 --out {out}", "--alpha 2.0: Input should be less than 1"),
    ("run --adapter {adapter} --alpha nan --out {out}", "--alpha nan"),
    ("run --adapter {adapter} --batch-size 0 --out {out}", "--batch-size 0"),
    ("run --adapter {adapter} --resamples 0 --out {out}", "--resamples 0"),
    ("run --adapter {adapter} --seed 100000000000000000000000000 --out {out}", "--seed"),
    ("run --checkpoint {broken_ckpt} --base {base} --suite {tension} --out {out}", "broken-ckpt/evalkit.json: not valid JSON"),
    ("run --adapter {adapter} --base {base} --suite {tmp}/long.yaml --out {out}", "long.yaml [too-long]: field 'prompt'"),
    ("validate {tmp}/dupes.yaml", "dupes.yaml [a]: field 'id': duplicate id"),
    ("run --adapter {adapter} --suite {tmp}/riddles.yaml --out {out}", "field 'kind' is 'riddles'"),
    ("export-tasks {tmp}/riddles.yaml --out {out}", "riddles.yaml: field 'kind'"),
    ("train {tmp}/no-text.yaml --base {base} --out {out}", "no-text.yaml: field 'text' is required"),
    ("train {tmp}/unknown-key.yaml --base {base} --out {out}", "unknown field 'mood'"),
    ("train {tmp}/not-yaml.yaml --base {base} --out {out}", "not-yaml.yaml: not valid YAML"),
    ("train {tmp}/missing.yaml --base {base} --out {out}", "missing.yaml: no such file"),
    ("train {tmp}/no-text.yaml --base {base} --out {out} --steps 0", "--steps 0"),
    ("scratch {tmp}/no-text.yaml --out {out} --steps 0", "--steps 0"),
    ("scratch {tmp}/no-text.yaml --out {out} --demo-stories -5", "--demo-stories -5"),
    ("validate {tmp}/unknown-key.yaml", "unknown-key.yaml: unknown field 'mood'"),
    ("run --adapter {tmp}/nope --base {base} --out {out}", "nope: no such adapter folder"),
    ("run --adapter {adapter} --adapter {bad_weights} --base {base} --suite {tension} --out {out}",
     "bad-weights/adapter_model.safetensors: unreadable adapter weights"),
    ("run --adapter {adapter} --base {other} --suite {tension} --out {out}",
     "evalkit.json: field 'base.fingerprint': adapter was trained on base"),
]
CASES += [
    # YAML: a key given twice; text that shows nothing; numbers out of range; names too long
    ("train {tmp}/twice-text.yaml --base {base} --out {out}", "twice-text.yaml: not valid YAML at line 4, column 1: key 'text' is given twice"),
    ("validate {tmp}/twice-items.yaml", "key 'items' is given twice"),
    ("train {tmp}/zero-width.yaml --base {base} --out {out}", "zero-width.yaml: the scene's text is empty"),
    ("train {tmp}/lr-inf.yaml --base {base} --out {out}", "lr-inf.yaml: field 'training.learning_rate'"),
    ("train {tmp}/seed-huge.yaml --base {base} --out {out}", "seed-huge.yaml: field 'training.seed'"),
    ("validate {tmp}/blank-prompt.yaml", "blank-prompt.yaml [a]: field 'prompt': is empty"),
    ("validate {tmp}/double-space.yaml", "double-space.yaml [a]: field 'options.0': starts with a space"),
    ("validate {tmp}/deep.yaml", "deep.yaml: not valid YAML: nested too deeply"),
    ("validate {tmp}/list-key.yaml", "list-key.yaml: not valid YAML at line 3, column 1: a key must be a plain value"),
    ("train {tmp}/bad-float.yaml --base {base} --out {out}", "bad-float.yaml: not valid YAML: could not convert"),
    ("validate {tmp}/kind-list.yaml", "kind-list.yaml: field 'kind' is ['tension']"),
    ("validate {tmp}/id-list.yaml", "id-list.yaml [['a']]: field 'id'"),
    ("validate {tmp}/same-options.yaml", "same-options.yaml [a]: field 'options': options 1 and 3 are the same text"),
    ("validate {tmp}/same-poles.yaml", "same-poles.yaml [a]: pole_a and pole_b are the same text"),
    ("validate {tmp}/alias-bomb.yaml", "alias-bomb.yaml: holds more than 2,000,000 values"),
    ("validate {tmp}/fills-bomb.yaml", "fills-bomb.yaml [t]: field 'templates.0': its fills make 1,000,000,000 items"),
    ("validate {tmp}/empty-stop.yaml", "empty-stop.yaml: field 'until.0'"),
    ("train {tmp}/long-id.yaml --base {base}", "long-id.yaml: field 'id'"),
    ("validate {empty}", "empty: folder holds no scene or probe files"),
    ("validate {tmp}/bad-role.yaml", "bad-role.yaml: field 'turns."),
    ("train {tmp}/bad-role.yaml --base {base} --out {out}", "bad-role.yaml: field 'turns."),
    ("run --adapter {adapter} --base {tmp}/not-a-model.gguf --suite {tension} --out {out}", "not-a-model.gguf: not a GGUF model"),
    ("train {honesty_scene} --base {truncated_gguf} --out {out}", "truncated.gguf: not a GGUF model"),
    # plans: names that would leave the output folder, or take another model's name
    ("experiment {tmp}/plan-traversal.yaml --out {out}", "plan-traversal.yaml: field 'stacks.named"),
    ("experiment {tmp}/plan-absolute.yaml --out {out}", "plan-absolute.yaml: field 'stacks.named"),
    ("experiment {tmp}/plan-reuses-scene-id.yaml --out {out}", "'honesty' is already the name of a scene"),
    ("experiment {tmp}/plan-stack-label.yaml --out {out}", "'stack-02' is already the name"),
    ("experiment {tmp}/plan-empty-stack.yaml --out {out}", "field 'stacks.named.nothing'"),
    # outputs: never a user's folder, never an input, never through a link or a file
    ("export-tasks {probes_copy} --out {probes_copy}", "probes-copy: is an input of this command"),
    ("export-tasks {tension} --out {user}", "user: holds files evalkit did not write"),
    ("export-tasks {tension} --out .", ": is the current folder"),
    ("train {honesty_scene} --base {base} --out {user}", "user: holds files evalkit did not write"),
    ("experiment {tmp}/plan-ok.yaml --out {user}", "user: holds files evalkit did not write"),
    ("experiment {tmp}/plan-ok.yaml --out adapters", "adapters: is where this command keeps what it trains"),
    ("scratch {honesty_scene} --base {base} --out {user}", "user: holds files evalkit did not write"),
    ("train {honesty_scene} --base {base} --out {link}", "link: is a symbolic link"),
    ("train {honesty_scene} --base {base} --out {afile}/x", "cannot write here"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {afile}/x", "cannot write here"),
    ("schema --out {user}", "user: is a folder"),
    ("schema --out mine.txt", "mine.txt: exists and was not written by evalkit"),
    ("compare {results} --out mine.txt", "mine.txt: exists and was not written by evalkit"),
    ("compare {results} --out {results}", "results.json: is an input of this command"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --junit mine.txt", "mine.txt: exists and was not written"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --junit {results}", "results.json: is an input"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --summary {tmp}/policy-ok.yaml", "policy-ok.yaml: is an input"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {tmp}/user-reports", "user-reports/honesty: holds files evalkit did not write"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {adapter}/..", "honesty: is an input of this command"),
    ("export-tasks {tension} --out {tmp}/has-manifest", "has-manifest: holds files evalkit did not write"),
    ("export-tasks {tension} --out {tmp}/dangling", "dangling: is a symbolic link"),
    ("demo --quick --out {user}", "user: holds files evalkit did not write"),
    ("demo --quick --out {tmp}/dangling", "dangling: is a symbolic link"),
    ("demo --quick --out adapters", "adapters: is where this command keeps what it trains"),
    ("export-tasks {tension} --out {adapter}", "honesty: holds an evalkit adapter; refusing to replace it with a lm-eval task folder"),
    ("calibrate --out {tmp}/user-cal", "calibration.json: exists and was not written by evalkit"),
    ("export-tasks {tension} --out {tmp}/fake-mark", "fake-mark: holds files evalkit did not write"),
    ("train {honesty_scene} --base {base} --out {base}", "is an input of this command"),
    ("train {honesty_scene} --base {base} --out {out} --lr -1", "--lr -1.0"),
    ("run --adapter {extra_tensor} --base {base} --suite {tension} --out {out}", "are not LoRA weights"),
    ("run --adapter {partial_layers} --base {base} --suite {tension} --out {out}", "field 'layers_to_transform'"),
    ("run --adapter {adapter} --reference {adapter} --base {base} --suite {tension} --out {out}", "is both the reference and a subject"),
    # option values click refuses: one line too, not its usage block
    ("run --adapter {adapter} --batch-size abc --out {out}", "error: run: Invalid value for '--batch-size'"),
    ("run --adapter {adapter} --bogus --out {out}", "error: run: No such option: --bogus"),
    ("power {results} --shift 1e-300 --power 2", "--shift must be above 0 and --power between 0 and 1"),
    # adapters whose config or weights peft would trip over mid-run
    ("run --adapter {alpha_text} --base {base} --suite {tension} --out {out}", "field 'lora_alpha': 'sixteen'"),
    ("run --adapter {dropout_two} --base {base} --suite {tension} --out {out}", "field 'lora_dropout': 2"),
    ("run --adapter {saves_head} --base {base} --suite {tension} --out {out}", "field 'modules_to_save'"),
    ("run --adapter {bad_regex} --base {base} --suite {tension} --out {out}", "field 'target_modules': '(' is not a regular expression"),
    # outputs that would destroy an input, or land where they do not belong
    ("run --adapter {adapter} --base {base} --suite {tension} --out {tmp}/rep-with-policy --gate {tmp}/rep-with-policy/honesty/policy.yaml --baseline {results}", "is an input of this command"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --junit {tmp}/gate.xml", "--junit goes with --gate"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --summary {tmp}/summary.json", "the summary is Markdown"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --summary {tmp}/summary-fifo", "is not a plain file"),
    ("run --adapter {long_name} --base {base} --suite {tension} --out {out}", "bytes; evalkit writes names of at most"),
    ("export-tasks {tmp}/collide --out {out}", "(one lm-eval task: - is written _) are used by more than one file"),
    ("validate {tmp}/repeated-item.yaml", "repeated-item.yaml [b]: field 'prompt': item 'a' asks the same"),
    ("validate {tmp}/lookalike-options.yaml", "the same text to a reader"),
    ("validate {tmp}/chat-no-role.yaml", "chat-no-role.yaml: field 'turns.0.role' is required"),
    ("validate {tmp}/chat-bad-role.yaml", "chat-bad-role.yaml: field 'turns.0.role': Input should be 'system', 'user' or 'assistant'"),
    ("validate {tmp}/blank-cluster.yaml", "blank-cluster.yaml [a]: field 'cluster': is empty"),
    ("validate {tmp}/lookalike-clusters.yaml", "lookalike-clusters.yaml [b]: field 'cluster': 'found\\u200b' reads like 'found'"),
    ("validate {tmp}/text-bomb.yaml", "characters once its aliases are expanded"),
    # records that are not what they say
    ("report {items_map_results}", "field 'items.x.s': nan is not a finite number"),
    ("gate --baseline {results} --candidate {manifest_kind_results} --policy {tmp}/policy-ok.yaml", "field 'manifest.suites.0.kind': 'riddle'"),
    ("gate --baseline {results} --candidate {swapped_results} --policy {tmp}/policy-ok.yaml", "other options in the candidate than in the baseline"),
    ("gate --baseline {one_cluster_results} --candidate {one_cluster_results} --policy {tmp}/policy-ok.yaml", "tension/entropy: its 24 items are one unit of evidence"),
    ("run --adapter {adapter} --base {base} --suite {tmp}/one-cluster/tension.yaml --out {out} --gate {tmp}/policy-ok.yaml --baseline {one_cluster_results}", "tension/entropy: its 24 items are one unit of evidence"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --gate {tmp}/policy-ok.yaml --baseline {one_cluster_results}", "has another cluster ('found'; 'all' in the baseline)"),
    ("power {negative_se_results} --shift 0.5", "se': Input should be greater than or equal to 0"),
    ("gate --baseline {results} --candidate {delimiter_results} --policy {tmp}/policy-ok.yaml", "suite tension scores with delimiter '\\n' in the candidate but ' ' in the baseline"),
    ("run --adapter {adapter} --base {base} --suite {tmp}/per-token/tension.yaml --out {out} --gate {tmp}/policy-ok.yaml --baseline {results}", "suite tension scores with normalization 'per_token' in this run's suites but 'sum' in the baseline"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --gate {tmp}/policy-ok.yaml --baseline {swapped_results}", "other options in this run's suites than in the baseline"),
    ("report {empty}", "is a folder without results.json"),
    ("run --adapter {backtracking_regex} --base {base} --suite {tension} --out {out}", "a regular expression did not finish matching"),
    ("run --adapter {bad_rank_key} --base {base} --suite {tension} --out {out}", "field 'rank_pattern': '(' is not a regular expression"),
    ("run --adapter {nan_weights} --base {base} --suite {tension} --out {out}", "hold NaN or infinite values"),
    ("run --adapter {pissa} --base {base} --suite {tension} --out {out}", "field 'init_lora_weights': 'pissa': peft would change the base's weights"),
    ("run --adapter {kasa} --base {base} --suite {tension} --out {out}", "field 'kasa_config': {} turns on a LoRA variant"),
    ("run --adapter {expert_lora} --base {base} --suite {tension} --out {out}", "field 'target_parameters': ['mlp.experts'] turns on"),
    ("run --adapter {half_lora} --base {base} --suite {tension} --out {out}", "have no lora_B (1 such modules)"),
    ("train {honesty_scene} --base {base} --out {out} --targets lm_head", "'lm_head' is not (only) a linear layer"),
    ("train {honesty_scene} --base {base} --out {out} --targets input_layernorm", "'input_layernorm' is not (only) a linear layer"),
    ("train {honesty_scene} --base {base} --out {out} --alpha 1e308", "--alpha 1e+308"),
    ("train {tmp}/special-only.yaml --base {base} --out {out}", "special-only.yaml: field 'text': this tokenizer reads the scene's text as special tokens only"),
    ("train {tmp}/chat-no-assistant.yaml --base {base} --out {out}", "chat-no-assistant.yaml: a chat scene needs an assistant turn"),
    ("train {tmp}/surrogate.yaml --base {base} --out {out}", "surrogate.yaml: not valid YAML: 'a \\ud800 b' holds a lone surrogate"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-inf-margin.yaml", "field 'checks.0.margin': Input should be a finite number"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-yes-key.yaml", "policy-yes-key.yaml: not valid YAML at line 1, column 1: key 'yes' reads as true in YAML; quote it"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-text-margin.yaml", "field 'checks.0.margin'"),
    ("report {nan_effect_results}", "field 'effects.0.se': nan is not a finite number"),
    # broken models and adapters
    ("run --adapter {adapter} --base {truncated_base} --suite {tension} --out {out}", "truncated-base: cannot load the model"),
    ("train {honesty_scene} --base {truncated_base} --out {out}", "truncated-base: cannot load the model"),
    ("run --adapter {pickle_adapter} --base {base} --suite {tension} --out {out}", "adapter_model.bin is a pickle"),
    ("run --adapter {bad_config} --base {base} --suite {tension} --out {out}", "bad-config/adapter_config.json: not valid JSON"),
    ("run --adapter {edited_rank} --base {base} --suite {tension} --out {out}", "field 'r': 4 but the weights have rank [8]"),
    ("run --adapter {edited_type} --base {base} --suite {tension} --out {out}", "field 'peft_type': 'IA3' is not LORA"),
    ("run --adapter {edited_targets} --base {base} --suite {tension} --out {out}", "field 'target_modules': adapter_model.safetensors has weights for"),
    ("run --adapter {wrong_manifest} --base {base} --suite {tension} --out {out}", "wrong-manifest/evalkit.json: field 'base'"),
    # the gate: numbers that are not numbers, policies that cannot apply, outputs that cannot be written
    ("gate --baseline {results} --candidate {nan_results} --policy {tmp}/policy-ok.yaml", "nan.json [tension/"),
    ("gate --baseline {results} --candidate {inf_results} --policy {tmp}/policy-ok.yaml", "-inf is not a finite number"),
    ("gate --baseline {results} --candidate {text_results} --policy {tmp}/policy-ok.yaml", "field 'entropy': 'high' is not a number"),
    ("gate --baseline {results} --candidate {results}", "no suite 'consistency' in the run"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-text-metric.yaml", "'winner_name' is not a tested metric of tension suites"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-twice.yaml", "key 'alpha' is given twice"),
    ("gate --baseline {results} --candidate {results} --policy {tmp}/policy-ok.yaml --junit {user}", "user: is a folder"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --gate {tmp}/policy-other-suite.yaml --baseline {results}", "no suite 'consistency' in the run"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --gate {broken_results} --baseline {results}", "not valid YAML"),
    # records that validate but could not be rendered
    ("report {no_winner_results}", "field 'winner' is missing"),
    ("report {unknown_kind_results}", "field 'kind': 'riddle' is not one of"),
    ("report {winner7_results}", "field 'winner': 7 is not the index"),
    ("report {winner_true_results}", "field 'winner': True is not a whole number"),
    ("report {negative_entropy_results}", "field 'entropy': -5 is below 0"),
    ("gate --baseline {results} --candidate {big_entropy_results} --policy {tmp}/policy-ok.yaml", "field 'entropy': 5 is above 1"),
    ("report {p_a_results}", "field 'p_a': 5 is above 1"),
    ("report {a_wins_results}", "field 'a_wins': 2 is not 0 or 1"),
    ("report {short_logprobs_results}", "field 'logprob_sum': [-1.0] is not a list of one number for each"),
    ("report {positive_logprob_results}", "field 'logprob_sum': holds 0.5, above 0"),
    ("report {twice_results}", "field 'items': item given twice"),
    # discovery: roles that cannot be, prompt banks that are not, outputs that are the user's
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --control {adapter}", "--control and --prompts go with --discover"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --discover --control {adapter}", "an adapter is given twice"),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --discover --control {broken_ckpt}", "broken-ckpt: not a peft adapter folder"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --reference {adapter}", "an adapter is given twice"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --prompts {tmp}/few-prompts.txt", "few-prompts.txt: 3 distinct prompts: discovery needs at least 20"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --prompts {tmp}/repeated-prompts.txt", "repeated-prompts.txt: 1 distinct prompts (24 lines repeat another): discovery needs at least 20"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --prompts {tmp}/nope.txt", "nope.txt: no such prompt file"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --prompts {tmp}/long-prompts.txt", "long-prompts.txt: prompt 26: "),
    ("run --adapter {adapter} --base {base} --suite {tension} --out {out} --discover --control {other_alpha} --prompts {tmp}/long-prompts.txt", "long-prompts.txt: prompt 26: "),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {user}", "user: holds files evalkit did not write"),
    ("discover --adapter {adapter} --base {base} --suite {tension} --out {out} --control {twin}", "twin: has the same weights as"),
    ("run --checkpoint {base} --base {base} --suite {tension} --out {out} --discover", "--discover looks inside adapters"),
]
if not torch.cuda.is_available():
    CASES.append(("run --adapter {adapter} --base {base} --suite {tension} --device cuda --out {out}",
                  "--device cuda: this torch sees no CUDA GPU"))
if not importlib.util.find_spec("vllm"):
    CASES.append(("run --adapter {adapter} --suite {tension} --backend vllm --out {out}",
                  "--backend vllm needs vllm and a GPU"))


def _adapter_copy(tmp: Path, source: Path, name: str, config: dict | None = None) -> Path:
    folder = tmp / name
    shutil.copytree(source, folder)
    if config is not None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def _nan_weights(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first][0, 0] = float("nan")
    save_file(weights, folder / "adapter_model.safetensors")
    return folder


def _without_one_b(folder: Path) -> Path:
    """One module's lora_B left out: peft would attach it with B's initial zeros, without a word."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "adapter_model.safetensors")
    del weights[sorted(k for k in weights if ".lora_B" in k)[0]]
    save_file(weights, folder / "adapter_model.safetensors")
    return folder


def _extra_tensor(folder: Path) -> Path:
    """A full output head saved beside the LoRA weights: peft would load it over the base's own."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "adapter_model.safetensors")
    save_file({**weights, "base_model.model.lm_head.weight": torch.zeros(8, 16)}, folder / "adapter_model.safetensors")
    return folder


def _results(tmp: Path, source: Path, name: str, change) -> Path:
    data = json.loads(source.read_text())
    change(data)
    (tmp / name).write_text(json.dumps(data))
    return tmp / name


def _set_score(key: str, value) -> object:
    def change(data: dict) -> None:
        data["items"][0]["subject"][key] = value
    return change


@pytest.fixture(scope="module")
def results_json(tmp_path_factory, honesty_adapter, tiny_llama) -> Path:
    import evalkit

    out = tmp_path_factory.mktemp("gate-baseline")
    evalkit.evaluate([honesty_adapter], base=tiny_llama, suites=[TENSION], out=out,
                     settings=evalkit.RunSettings(stats=evalkit.StatsSettings(resamples=200)))
    return out / "honesty" / "results.json"


@pytest.fixture(scope="module")
def places(tmp_path_factory, honesty_adapter, tiny_llama, other_tiny_llama, results_json) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    for name, text in FILES.items():
        (tmp / name).write_text(text)
    for name, named in [*PLANS.items(), ("plan-ok.yaml", "")]:
        (tmp / name).write_text(PLAN.format(scenes=ROOT / "scenes" / "01-honesty.yaml", tension=TENSION,
                                            named=named))
    (tmp / "empty").mkdir()
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "link").symlink_to(tmp / "empty")
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    (tmp / "user-reports" / "honesty").mkdir(parents=True)
    (tmp / "user-reports" / "honesty" / "notes.txt").write_text("the user's own notes")
    (tmp / "user-cal").mkdir()
    (tmp / "user-cal" / "calibration.json").write_text('{"mine": true}')
    (tmp / "fake-mark").mkdir()
    (tmp / "fake-mark" / ".evalkit").symlink_to(tmp / "afile")  # a link named like the mark is no mark
    (tmp / "fake-mark" / "notes.txt").write_text("the user's own notes")
    (tmp / "has-manifest").mkdir()
    (tmp / "has-manifest" / "evalkit.json").write_text("{}")
    (tmp / "has-manifest" / "notes.txt").write_text("the user's own notes")
    gguf = tmp / "truncated.gguf"
    gguf.write_bytes(b"GGUF" + bytes(200))
    truncated = tmp / "truncated-base"
    shutil.copytree(tiny_llama, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = _adapter_copy(tmp, honesty_adapter, "pickle-adapter")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    bad_config = _adapter_copy(tmp, honesty_adapter, "bad-config")
    (bad_config / "adapter_config.json").write_text("{not json")
    wrong_manifest = _adapter_copy(tmp, honesty_adapter, "wrong-manifest")
    manifest = json.loads((wrong_manifest / "evalkit.json").read_text())
    (wrong_manifest / "evalkit.json").write_text(json.dumps({**manifest, "base": "somewhere"}))
    shutil.copytree(ROOT / "probes", tmp / "probes-copy")
    bad_weights = _adapter_copy(tmp, honesty_adapter, "bad-weights")
    (bad_weights / "adapter_model.safetensors").write_text("not safetensors")
    broken = tmp / "broken-ckpt"
    shutil.copytree(tiny_llama, broken)
    (broken / "evalkit.json").write_text("{not json")
    (tmp / "summary.json").write_text("{}")
    os.mkfifo(tmp / "summary-fifo")  # appending would block for ever
    (tmp / "per-token").mkdir()  # the same items, scored per token
    (tmp / "per-token" / "tension.yaml").write_text(TENSION.read_text().replace("normalization: sum", "normalization: per_token"))
    (tmp / "one-cluster").mkdir()  # the same items, all in one cluster (as one-cluster.json has them)
    (tmp / "one-cluster" / "tension.yaml").write_text(re.sub(r"cluster: [\w-]+", "cluster: all", TENSION.read_text()))
    (tmp / "collide").mkdir()  # 'my-suite' and 'my_suite' would be one lm-eval task
    for name in ("my-suite", "my_suite"):
        (tmp / "collide" / f"{name}.yaml").write_text(TENSION.read_text().replace("suite: tension", f"suite: {name}"))
    with atomic_directory(tmp / "rep-with-policy" / honesty_adapter.name, kind="run report") as folder:
        (folder / "policy.yaml").write_text((tmp / "policy-ok.yaml").read_text())  # an evalkit folder a user reused
    long_name = _adapter_copy(tmp, honesty_adapter, "a" * 250)
    records = {
        "items_map_results": _results(tmp, results_json, "items-map.json",
                                      lambda d: d.update(items={"x": {"s": float("nan")}})),
        "manifest_kind_results": _results(tmp, results_json, "manifest-kind.json",
                                          lambda d: d["manifest"]["suites"][0].update(kind="riddle")),
        "negative_se_results": _results(tmp, results_json, "negative-se.json",
                                        lambda d: d["effects"][0].update(se=-1.0)),
        "delimiter_results": _results(tmp, results_json, "delimiter.json",
                                      lambda d: d["manifest"]["suites"][0]["scoring"].update(delimiter="\n")),
        "one_cluster_results": _results(tmp, results_json, "one-cluster.json",
                                        lambda d: [i.update(cluster="all") for i in d["items"]]),
        "swapped_results": _results(tmp, results_json, "swapped.json",
                                    lambda d: [i.update(options=i["options"][::-1]) for i in d["items"]]),
        "nan_results": _results(tmp, results_json, "nan.json", _set_score("entropy", float("nan"))),
        "inf_results": _results(tmp, results_json, "inf.json", _set_score("entropy", float("-inf"))),
        "text_results": _results(tmp, results_json, "text.json", _set_score("entropy", "high")),
        "no_winner_results": _results(tmp, results_json, "no-winner.json",
                                      lambda d: d["items"][0]["subject"].pop("winner")),
        "unknown_kind_results": _results(tmp, results_json, "unknown-kind.json",
                                         lambda d: d["items"][0].update(kind="riddle")),
        "winner7_results": _results(tmp, results_json, "winner7.json", _set_score("winner", 7)),
        "twice_results": _results(tmp, results_json, "twice.json", lambda d: d["items"].append(d["items"][0])),
        "winner_true_results": _results(tmp, results_json, "winner-true.json", _set_score("winner", True)),
        "negative_entropy_results": _results(tmp, results_json, "entropy-5.json", _set_score("entropy", -5)),
        "big_entropy_results": _results(tmp, results_json, "entropy5.json", _set_score("entropy", 5)),
        "p_a_results": _results(tmp, results_json, "p-a.json", _set_score("p_a", 5)),
        "a_wins_results": _results(tmp, results_json, "a-wins.json", _set_score("a_wins", 2)),
        "short_logprobs_results": _results(tmp, results_json, "short.json", _set_score("logprob_sum", [-1.0])),
        "positive_logprob_results": _results(tmp, results_json, "positive.json", lambda d: d["items"][0]["subject"].update(
            logprob_sum=[0.5, *d["items"][0]["subject"]["logprob_sum"][1:]])),
        "nan_effect_results": _results(tmp, results_json, "nan-effect.json",
                                       lambda d: d["effects"][0].update(se=float("nan"))),
        "broken_results": tmp / "twice-text.yaml",
    }
    return {"tmp": tmp, "adapter": honesty_adapter, "base": tiny_llama, "other": other_tiny_llama,
            "tension": TENSION, "honesty_scene": ROOT / "scenes" / "01-honesty.yaml", "empty": tmp / "empty",
            "afile": tmp / "afile", "link": tmp / "link", "truncated_base": truncated, "truncated_gguf": gguf,
            "pickle_adapter": pickled, "bad_config": bad_config, "wrong_manifest": wrong_manifest,
            "edited_rank": _adapter_copy(tmp, honesty_adapter, "edited-rank", {"r": 4}),
            "twin": _adapter_copy(tmp, honesty_adapter, "twin"),
            "other_alpha": _adapter_copy(tmp, honesty_adapter, "other-alpha", {"lora_alpha": 1}),
            "edited_type": _adapter_copy(tmp, honesty_adapter, "edited-type", {"peft_type": "IA3"}),
            "edited_targets": _adapter_copy(tmp, honesty_adapter, "edited-targets", {"target_modules": ["q_proj"]}),
            "alpha_text": _adapter_copy(tmp, honesty_adapter, "alpha-text", {"lora_alpha": "sixteen"}),
            "dropout_two": _adapter_copy(tmp, honesty_adapter, "dropout-two", {"lora_dropout": 2}),
            "saves_head": _adapter_copy(tmp, honesty_adapter, "saves-head", {"modules_to_save": ["lm_head"]}),
            "bad_regex": _adapter_copy(tmp, honesty_adapter, "bad-regex", {"target_modules": "("}),
            # peft's re backtracks on nested repeats: this one would take hours on a 30-character module name
            "backtracking_regex": _adapter_copy(tmp, honesty_adapter, "backtracking", {"target_modules": r"(.*)*z"}),
            "bad_rank_key": _adapter_copy(tmp, honesty_adapter, "bad-rank-key", {"rank_pattern": {"(": 8}}),
            "nan_weights": _nan_weights(_adapter_copy(tmp, honesty_adapter, "nan-weights")),
            "pissa": _adapter_copy(tmp, honesty_adapter, "pissa", {"init_lora_weights": "pissa"}),
            "kasa": _adapter_copy(tmp, honesty_adapter, "kasa", {"kasa_config": {}}),
            "expert_lora": _adapter_copy(tmp, honesty_adapter, "expert-lora", {"target_parameters": ["mlp.experts"]}),
            "half_lora": _without_one_b(_adapter_copy(tmp, honesty_adapter, "half-lora")),
            "extra_tensor": _extra_tensor(_adapter_copy(tmp, honesty_adapter, "extra-tensor")),
            "partial_layers": _adapter_copy(tmp, honesty_adapter, "partial-layers", {"layers_to_transform": [0]}),
            "long_name": long_name, "results": results_json, "bad_weights": bad_weights, "probes_copy": tmp / "probes-copy", "broken_ckpt": broken, **records}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, expected", CASES, ids=[c[0].split(" {")[0] + ": " + c[1][:40] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(places, tmp_path, monkeypatch, args, expected):
    """Run from a folder of the user's own, with a user folder beside: neither may change."""
    work = tmp_path / "work"
    user = work / "user"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("the user's own notes")
    (work / "mine.txt").write_text("the user's own file")
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    before, inputs = snapshot(work), snapshot(places["tmp"])
    argv = args.format(out=out, user=user, **places).split()
    result = CliRunner().invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (argv, result.stderr, result.exception)
    assert len(lines) == 1 and expected in lines[0], (argv, result.stderr)
    assert "Traceback" not in result.stderr
    assert not out.exists(), argv
    assert snapshot(work) == before, argv  # nothing deleted, nothing half-written, nothing new
    assert snapshot(places["tmp"]) == inputs, argv
    assert not list(tmp_path.parent.glob("x/baselines")) and not Path("/tmp/evil").exists()


def test_no_cache_is_one_flag_that_says_what_it_recomputes():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "--no-cache" in result.stdout and "--no-no-cache" not in result.stdout
    assert "reference and subjects" in result.stdout

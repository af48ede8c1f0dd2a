"""The regular expressions an adapter config hands to peft, tried where they cannot hang evalkit.

peft matches a string `target_modules` and every key of `rank_pattern`/`alpha_pattern` against
the base's module names with Python's `re`, which backtracks: a pattern such as `(a|a)*b` or
`(.*)*x` takes exponential time on a 60-character name, and `re` cannot be interrupted. So
the same matches run first in a child process with a time limit; a pattern that does not
finish there is refused before peft ever sees it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from evalkit.errors import EvalkitError

TIME_LIMIT_S = 5.0

# The child imports nothing of evalkit or torch, so it starts in a few tens of milliseconds.
_CHILD = r"""
import json, re, sys
job = json.load(sys.stdin)
results = []
for field, regex, whole in job["patterns"]:
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        results.append({"error": str(exc)})
        continue
    match = compiled.fullmatch if whole else compiled.match
    results.append({"matched": [name for name in job["names"] if match(name)]})
json.dump(results, sys.stdout)
"""


def peft_regexes(config: dict) -> list[tuple[str, str, str, bool]]:
    """(field, pattern as written, regex peft builds from it, whether peft matches the whole name)."""
    found = []
    targets = config.get("target_modules")
    if isinstance(targets, str):
        found.append(("target_modules", targets, targets, True))
    for field in ("rank_pattern", "alpha_pattern"):
        for key in config.get(field) or {}:
            found.append((field, key, rf"(.*\.)?({key})$", False))  # peft's get_pattern_key
    return found


def match_patterns(config: dict, names: list[str], where: str) -> dict[tuple[str, str], set[str]]:
    """Module names each of the config's patterns selects, by (field, pattern as written), or an error
    naming the field whose pattern is not a regular expression or would not finish."""
    patterns = peft_regexes(config)
    if not patterns:
        return {}
    job = {"patterns": [(field, regex, whole) for field, _, regex, whole in patterns], "names": names}
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=json.dumps(job), capture_output=True,
                              text=True, timeout=TIME_LIMIT_S, check=True)
    except subprocess.TimeoutExpired:
        fields = ", ".join(sorted({f"'{field}'" for field, *_ in patterns}))
        raise EvalkitError(f"field {fields}: a regular expression did not finish matching the base's "
                           f"{len(names)} module names in {TIME_LIMIT_S:.0f} s (nested repeats backtrack "
                           "without end); write the module names as a list", where=where) from None
    except subprocess.CalledProcessError as exc:
        raise EvalkitError(f"could not try the config's regular expressions: {exc.stderr.strip()[-200:]}",
                           where=where) from None
    matched: dict[tuple[str, str], set[str]] = {}
    for (field, pattern, _, _), result in zip(patterns, json.loads(done.stdout), strict=True):
        if "error" in result:
            raise EvalkitError(f"field '{field}': {pattern!r} is not a regular expression ({result['error']})",
                               where=where)
        matched[field, pattern] = set(result["matched"])
    return matched

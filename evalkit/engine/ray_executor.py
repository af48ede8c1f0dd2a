"""`--executor ray`: (subject x suite) jobs spread over a Ray cluster.

Each worker is a Ray actor that loads the base once, attaches each adapter when a job needs it,
and scores whatever (model, suite) job it is handed with the same `Runner` a local run uses,
so a job's numbers are a local run's numbers. The reference is scored first (its suites in
parallel); subjects need its generations and distributions, which go to the workers once
through Ray's object store. Workers share the score cache when they share a file system.

Without `--ray-address` (or RAY_ADDRESS) a local Ray is started on this machine. On a cluster,
the base, the adapters and the suites must be at the same paths on every node.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable

from evalkit.engine.base import Base
from evalkit.engine.evaluation import Counts, Evaluated
from evalkit.errors import EvalkitError, first_line
from evalkit.inputs.suites import LoadedSuite
from evalkit.offline import OFFLINE
from evalkit.settings import RAY_ADDRESS

# What a worker needs from the driver's environment (offline Hugging Face, the cache folder).
FORWARDED_ENV = ("EVALKIT_CACHE", "TQDM_DISABLE", *OFFLINE)


class _Worker:
    """A Ray actor: the base loaded once, adapters attached as jobs need them, `threads` torch threads."""

    def __init__(self, base_path: str, settings, adapter_paths: list[str], suites: list[LoadedSuite],
                 use_cache: bool, threads: int):
        import torch

        from evalkit.engine.base import load_base
        from evalkit.engine.runner import Runner, adapter_subject

        torch.set_num_threads(threads)
        self.suites = {s.name: s for s in suites}
        base = load_base(Path(base_path), settings.dtype, settings.device)
        # The driver has checked every adapter (and refused one without a manifest where it must).
        adapters = [adapter_subject(Path(p), trained_elsewhere=True) for p in adapter_paths]
        self.runner = Runner(base, suites, settings, adapters,
                             use_cache=use_cache)

    def evaluate(self, subject, suite_name: str, reference):
        return self.runner.evaluate(subject, reference, suites=[self.suites[suite_name]])


def merge(parts: list[tuple[Evaluated, str, Counts]]) -> tuple[Evaluated, str, Counts]:
    """One model's per-suite results as one."""
    evaluated, counts = Evaluated(scores={}), Counts()
    for part, _, part_counts in parts:
        evaluated.scores.update(part.scores)
        evaluated.generations.update(part.generations)
        evaluated.distributions.update(part.distributions)
        evaluated.generated.update(part.generated)
        evaluated.tokenizer = part.tokenizer
        counts.computed += part_counts.computed
        counts.cached += part_counts.cached
    # One worker per suite, each deciding for itself: every distinct account is kept.
    evaluated.layout = "; ".join(dict.fromkeys(part.layout for part, _, _ in parts if part.layout))
    return evaluated, parts[0][1], counts


def check_reachable(address: str, named: str) -> None:
    """A cluster address is well formed and its port answers (Ray retries an address that does not,
    for ever); 'auto' is left to Ray, which says at once when no cluster runs here."""
    if not RAY_ADDRESS.fullmatch(address):
        raise EvalkitError(f"{named} {address!r}: is not HOST:PORT, ray://HOST:PORT or auto")
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise EvalkitError(f"{named} {address!r}: no Ray cluster answers there ({first_line(exc)})") from None


class RayRunner:
    """The local `Runner`'s interface, with the work done by Ray actors."""

    def __init__(self, base: Base, suites: list[LoadedSuite], settings, adapters: list, use_cache: bool = True,
                 log: Callable[[str], None] = print):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise EvalkitError("--executor ray needs Ray: pip install 'evalkit[ray]'") from None
        from evalkit.engine.runner import check_inputs

        check_inputs(base, suites, adapters)  # in the driver, before any worker starts
        self.suites = suites
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            address = settings.ray_address or os.environ.get("RAY_ADDRESS")
            named = "--ray-address" if settings.ray_address else "RAY_ADDRESS"
            if address is not None:
                check_reachable(address, named)
            init: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                        runtime_env={"env_vars": env})
            if address is None:
                init["num_cpus"] = settings.workers or os.cpu_count() or 1
            try:
                ray.init(address=address, **init)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
                where = f"{named} {address!r}" if address else "a local Ray"
                raise EvalkitError(f"{where}: Ray did not start: {first_line(exc)}") from None
            self._started = True
        else:
            self._started = False
        cpus = int(ray.available_resources().get("CPU", 1))
        workers = max(1, settings.workers or cpus)
        threads = max(1, cpus // workers)
        log(f"ray: {workers} workers x {threads} threads")
        actor = ray.remote(num_cpus=threads)(_Worker)
        self._actors: list[Any] = [actor.remote(base.path, settings, [str(a.path) for a in adapters], suites, use_cache,
                                     threads) for _ in range(workers)]
        self._pool = ActorPool(self._actors)
        self._ray = ray

    def plan(self, models: list) -> None:
        """Workers score one (model, suite) job at a time; nothing is generated ahead."""

    def _run(self, jobs: list[tuple]) -> list:
        return list(self._pool.map(lambda actor, job: actor.evaluate.remote(*job), jobs))

    def evaluate(self, subject, reference=None):
        return merge(self._run([(subject, s.name, reference) for s in self.suites]))

    def evaluate_subjects(self, subjects: list, reference: tuple[Evaluated, str]):
        shared = self._ray.put(reference)
        results = self._run([(subject, s.name, shared) for subject in subjects for s in self.suites])
        n = len(self.suites)
        for k in range(len(subjects)):
            yield merge(results[k * n:(k + 1) * n])

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()


"""Where the work of a run is computed: in this process, or on Ray actors (`distributed.workers`).

The core hands out its work as calls `fn(lm, *args)` of module-level functions (a batch of inner-loop
evaluations, a call of the self-edit writer, a pre-update score) to an *executor*:

- `Local` runs each call at once, in this process, on the command's own model. It is what every run
  without workers uses, so the single-process path and the distributed path are one code path.
- `Workers` sends each call to a free Ray actor. Every actor holds its own replica of the policy: it
  loads the base model itself and merges the policy adapters that the driver's model holds
  (`LoadedModel.policy`, paths in the run directory; weights never travel through the driver), then
  runs the call. Only the call's arguments (contexts, self-edit texts, seeds, the domain's settings)
  and its results travel.

The driver (the command's process) still decides everything: it cuts the work into the same batches
as a single-process run, hands one to each free worker, and writes every result to the run's records
as it arrives, so `--resume` works as always. A call whose worker dies is run again: Ray restarts
the actor (it loads the model and the policy again) and sends it the calls it had; an actor that died
RESTARTS times is given up and its call goes to another. Calls are pure computations, so running one
twice changes nothing. With the same seeds and batch sizes (`inner_loop.adapters_per_batch`), the
records equal a single-process run's (tests/core/test_distributed.py).

A cluster needs the run directory on a filesystem every node sees (workers read the policy adapters
from it) and this package installed on every node.
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seal.core.models import DeferredModel, LoadedModel, load_configured

RESTARTS = 2  # times Ray restarts a worker whose process died (running its calls again), before it is given up
TRIES = 3  # workers one call is sent to before its failure ends the run
UNAVAILABLE_WAIT = 1.0  # seconds before a call is sent again to a worker that is restarting
RELEASE_WAIT = 10.0  # seconds to wait for busy cluster resources (workers of an earlier command stopping)


class WorkerError(RuntimeError):
    """The workers could not start, or could not finish a call."""


class Local:
    """The executor of a run without workers: each call runs at once, here, on `lm`."""

    size = 1

    def __init__(self, lm: LoadedModel):
        self.lm, self._done, self._tickets = lm, [], 0

    def free(self) -> bool:
        return not self._done

    def submit(self, fn: Callable, *args) -> int:
        self._tickets += 1
        self._done.append((self._tickets, fn(self.lm, *args)))
        return self._tickets

    def next_done(self) -> tuple[int, Any]:
        return self._done.pop()

    def call(self, fn: Callable, *args) -> Any:
        """fn(lm, *args) on one worker (here: this process)."""
        return fn(self.lm, *args)


def executor(lm: LoadedModel):
    """The workers attached to `lm` (`attach`), else `Local(lm)`."""
    return lm.workers if lm.workers is not None else Local(lm)


def map_unordered(pool, fn: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
    """(index, fn(lm, *calls[index])) for every call, as each finishes, every worker of `pool` kept busy."""
    queue, pending = list(enumerate(calls)), {}
    while queue or pending:
        while queue and pool.free():
            i, args = queue.pop(0)
            pending[pool.submit(fn, *args)] = i
        ticket, result = pool.next_done()
        yield pending.pop(ticket), result


class Replica:
    """A Ray actor: the run's model on one GPU or a group of CPU cores, kept equal to the driver's policy."""

    def __init__(self, model_config: dict, threads: int):
        import torch

        from seal.core.config import ModelConfig

        torch.set_num_threads(threads)
        self.model_config = ModelConfig(**model_config)
        self.lm = load_configured(self.model_config)

    def ready(self) -> dict:
        import torch

        return dict(host=socket.gethostname(), pid=os.getpid(), device=str(self.lm.device), threads=torch.get_num_threads())

    def call(self, policy: list[str], fn: Callable, *args) -> Any:
        self._sync(policy)
        return fn(self.lm, *args)

    def _sync(self, policy: list[str]) -> None:
        """Hold the base model with exactly the adapters `policy` merged, in order: merge what is new,
        or start again from the base weights when the policy is not a continuation of this one's."""
        from seal.core.models import merge_saved_adapter

        if self.lm.policy != policy[:len(self.lm.policy)]:
            self.lm = load_configured(self.model_config)
        for path in policy[len(self.lm.policy):]:
            merge_saved_adapter(self.lm, Path(path))


class Workers:
    """`distributed.workers` Ray actors (`Replica`), each holding the policy of the driver's model `lm`.
    Every check (the cluster answers, has room for them, each loads the model) is made when they start,
    before the driver reads its tokenizer (its weights wait until it computes itself: models.DeferredModel)."""

    def __init__(self, config, model_config, log: Callable[[str], None] = print):
        import ray

        self.config, self.log = config, log
        self._lm: Callable[[], LoadedModel | None] = lambda: None  # the driver's model (load_run_model)
        local = config.address is None
        if not local:
            answers(config.address)
        if not ray.is_initialized():
            try:
                ray.init(address=config.address, num_cpus=os.cpu_count() if local else None, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR", configure_logging=True)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise WorkerError(f"distributed.address {config.address!r}: could not reach a Ray cluster ({err})") from None
        total = ray.cluster_resources()
        cpus = config.cpus_per_worker or max(1, int(total.get("CPU", 1)) // config.workers)
        gpus = config.gpus_per_worker
        if gpus is None:
            gpus = 1 if total.get("GPU", 0) >= config.workers else 0
        need = {"CPU": cpus * config.workers, "GPU": gpus * config.workers}
        deadline = time.monotonic() + RELEASE_WAIT
        while short := [r for r in need if need[r] > ray.available_resources().get(r, 0) + 1e-9]:
            # an actor that cannot be placed would wait forever; workers of an earlier command may still be going
            r = short[0]
            if need[r] > total.get(r, 0) + 1e-9 or time.monotonic() > deadline:
                each = need[r] / config.workers
                raise WorkerError(f"distributed.workers {config.workers} x {each:g} {r} each: the Ray cluster has "
                                  f"{ray.available_resources().get(r, 0):g} {r} free of {total.get(r, 0):g} "
                                  f"(lower --workers or distributed.{r.lower()}s_per_worker)")
            time.sleep(0.5)
        actor = ray.remote(Replica).options(num_cpus=cpus, num_gpus=gpus, max_restarts=RESTARTS, max_task_retries=RESTARTS)
        self.actors = [actor.remote(model_config.model_dump(), cpus) for _ in range(config.workers)]
        try:
            self.info = ray.get([a.ready.remote() for a in self.actors], timeout=config.start_timeout)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(f"distributed.workers {config.workers}: not all started within {config.start_timeout:.0f} s "
                              f"(each asks for {cpus} CPU and {gpus} GPU; the cluster has "
                              f"{ray.cluster_resources()})") from None
        except ray.exceptions.RayError as err:
            raise WorkerError(f"a distributed worker could not load model '{model_config.name}': {err}") from None
        self.idle = list(range(len(self.actors)))
        self.inflight: dict[Any, tuple] = {}  # Ray object ref -> (ticket, worker, fn, args, tries)
        self.retry: list[tuple] = []
        self._tickets = 0

    @property
    def size(self) -> int:
        return len(self.actors)

    @property
    def lm(self) -> LoadedModel | None:
        """The driver's model, whose policy the workers hold. A weak reference: when the command is done
        with its model, the workers (and their actors) go with it at once, not at a later garbage collection."""
        return self._lm()

    @lm.setter
    def lm(self, lm: LoadedModel) -> None:
        self._lm = weakref.ref(lm)

    def free(self) -> bool:
        return bool(self.idle) and not self.retry

    def submit(self, fn: Callable, *args) -> int:
        self._tickets += 1
        self._send(self._tickets, fn, args, 0)
        return self._tickets

    def _send(self, ticket: int, fn: Callable, args: tuple, tries: int) -> None:
        if self.lm.policy is None:
            raise WorkerError("the model holds an update that was not saved to the run directory; workers cannot load it")
        worker = self.idle.pop(0)
        ref = self.actors[worker].call.remote(list(self.lm.policy), fn, *args)
        self.inflight[ref] = (ticket, worker, fn, args, tries)

    def next_done(self) -> tuple[int, Any]:
        """(ticket, result) of the next call to finish. A call whose worker died goes out again."""
        import ray

        while True:
            while self.retry and self.idle:
                self._send(*self.retry.pop(0))
            if not self.inflight:
                raise WorkerError(f"all {self.size} distributed workers died (each was restarted {RESTARTS} times)")
            (ref,), _ = ray.wait(list(self.inflight), num_returns=1)
            ticket, worker, fn, args, tries = self.inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # still restarting after a death: wait for it
                time.sleep(UNAVAILABLE_WAIT)
                self.idle.append(worker)
                self.retry.append((ticket, fn, args, tries))
                continue
            except ray.exceptions.RayActorError as err:  # restarted RESTARTS times: given up, never idle again
                self.log(f"distributed worker {worker} ({self.info[worker]['host']}) is lost; its {fn.__name__} "
                         f"call goes to another worker: {str(err).splitlines()[0][:300]}")
                if tries + 1 >= TRIES:
                    raise WorkerError(f"a call of {fn.__name__} failed on {TRIES} workers; the last died with: {err}") from None
                self.retry.append((ticket, fn, args, tries + 1))
                continue
            self.idle.append(worker)
            return ticket, result

    def call(self, fn: Callable, *args) -> Any:
        """fn(lm, *args) on one worker."""
        if self.inflight or self.retry:
            raise WorkerError("Workers.call while other calls are in flight")
        self.submit(fn, *args)
        return self.next_done()[1]


def answers(address: str, timeout: float = 5.0) -> None:
    """Refuse, in seconds, a cluster address ("host:port", "ray://host:port") where nothing listens
    (`ray.init` would retry for minutes); "auto" is left to Ray, which fails at once without a cluster."""
    target = address.removeprefix("ray://")
    if ":" not in target:
        return
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise WorkerError(f"distributed.address {address!r}: no Ray cluster answers there ({err})") from None


def load_run_model(config, log: Callable[[str], None] = print) -> LoadedModel:
    """The model a run's configuration names, with `distributed.workers` Ray workers attached when set
    (`log`: where a lost worker is reported, e.g. the run's progress log)."""
    if not config.distributed.workers:
        return load_configured(config.model)
    workers = Workers(config.distributed, config.model, log)
    m = config.model
    lm = DeferredModel(m.name, m.device, m.dtype)  # the weights are read only for what the driver computes itself
    workers.lm, lm.workers = lm, workers
    return lm

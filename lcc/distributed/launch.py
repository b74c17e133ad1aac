"""Run a context-parallel program in N local processes through torch's own launcher.

:func:`launch` starts ``fn(*args)`` on N ranks with ``torch.distributed.launcher.api.elastic_launch``
(what ``torchrun --standalone`` runs): gloo on the CPU, NCCL on CUDA, one process group per run
with a bounded timeout.  The ranks are forked from the process that built or loaded the program,
so nothing is captured or pickled again.  A rank that fails or dies stops the others (the
elastic agent watches them every ``monitor_interval``) and :func:`launch` raises
:class:`RankFailed` with one line naming the first rank that failed; a worker whose peer vanished
mid-collective gets gloo's error or the group timeout, never a hang.  :func:`generate` is what
``lcc run`` calls for a ``context-parallel:ranks=N`` program or artifact.  Across machines the
same command runs under torchrun (``torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d
--rdzv-endpoint HOST:29500 -m lcc run ARTIFACT ...``): :func:`launch` then runs in the group
torchrun set up.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from datetime import timedelta
from typing import Any, Callable

from lcc.distributed import CP_PASS
from lcc.errors import RunFailed, UsageError

TIMEOUT_S = 120  # the process group's collective timeout: a silent peer ends the run after this long
PEER_GRACE_S = 1.0  # a failing rank waits this long before exiting (see _rank_main)


class RankFailed(RunFailed):
    """A rank of a multi-process run failed or died; the message names it (one line)."""


def ranks_of(passes) -> int | None:
    """N of a ``context-parallel:ranks=N`` among ``passes`` (pass strings or specs), or None."""
    from lcc.passes import parse_pass

    for p in passes or ():
        spec = parse_pass(p) if isinstance(p, str) else p
        if spec.name == CP_PASS:
            return int(spec.kwargs["ranks"])
    return None


def backend_for(device: str) -> str:
    """gloo on the CPU, NCCL on CUDA."""
    return "nccl" if device.startswith("cuda") else "gloo"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _worker(fn: Callable, args: tuple, backend: str, timeout_s: float):
    """One rank: join the group, run ``fn``, leave the group; a failure is printed as one line and re-raised
    (recorded in the error file the agent reads, so the launcher's line carries it)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_rank_main)(fn, args, backend, timeout_s)


def _rank_main(fn: Callable, args: tuple, backend: str, timeout_s: float, keep_group: bool = False):
    import torch
    import torch.distributed as dist

    if keep_group and dist.is_initialized():
        return fn(*args)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif not keep_group:
        torch.set_num_threads(1)  # OpenMP is not fork-safe: a forked rank computing on several threads can hang
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    try:
        return fn(*args)
    except BaseException as e:
        print(f"lcc: rank {rank}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr, flush=True)
        time.sleep(PEER_GRACE_S)  # a peer that died first is seen by the agent first, so the line names it
        raise
    finally:
        if not keep_group:
            dist.destroy_process_group()


def _failure_line(error) -> str:
    """One line naming the rank that failed first, from the agent's ``ChildFailedError``; a rank killed by a
    signal is named before the peers whose collectives then broke (their gloo errors can be recorded first)."""
    killed = sorted((f.timestamp, rank, f) for rank, f in error.failures.items() if f.exitcode < 0)
    if killed:
        _, rank, failure = killed[0]
        return f"rank {rank} died ({failure.signal_name()}); the other ranks were stopped"
    rank, failure = error.get_first_failure()
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return f"rank {rank} failed (exit code {failure.exitcode}): {_one_line(message) or 'see its output above'}"


def under_torchrun() -> bool:
    """True inside a process torchrun (or another elastic agent) started as one rank of a group."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def launch(ranks: int, fn: Callable, *args, device: str = "cpu", timeout_s: float = TIMEOUT_S) -> Any:
    """``fn(*args)`` on ``ranks`` local processes in one process group; rank 0's return value.

    Workers are forked, so ``fn`` and ``args`` (a program and its weights) are shared, not pickled or
    rebuilt; only rank 0's result is pickled back.
    On the CPU each rank computes on one thread.  Raises :class:`RankFailed` (one line) when a rank
    fails or dies; the others are stopped within the agent's monitor interval.
    """
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if ranks < 2:
        raise UsageError(f"context-parallel needs ranks >= 2, got {ranks}")
    if under_torchrun():  # torchrun started this process as one rank: run here, in its group
        if int(os.environ["WORLD_SIZE"]) != ranks:
            raise UsageError(f"the program needs {ranks} ranks but torchrun started {os.environ['WORLD_SIZE']}: "
                             f"use --nnodes x --nproc-per-node = {ranks}")
        return _rank_main(fn, args, backend_for(device), timeout_s, keep_group=True)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failure is our one line
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=ranks, run_id=f"lcc-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="fork", logs_specs=DefaultLogsSpecs(), rdzv_timeout=int(timeout_s))
    try:
        results = elastic_launch(config, _worker)(fn, args, backend_for(device), timeout_s)
    except ChildFailedError as e:
        raise RankFailed(_failure_line(e)) from None
    return results[0]


def program_ranks(program) -> int | None:
    """N of a context-parallel program (a Program, a loaded artifact or its manifest dict), else None."""
    passes = program.get("plan", {}).get("passes") if isinstance(program, dict) else getattr(program, "passes", None)
    return ranks_of(passes or ())


def _on_rank_device(program, device: str):
    """The program on this rank's GPU (``cuda:LOCAL_RANK``) for a CUDA run, else as it is."""
    if not device.startswith("cuda"):
        return program
    from lcc.runtime import to_device

    return to_device(program, f"cuda:{os.environ['LOCAL_RANK']}")


def _generate(program, ids, max_new_tokens: int, stop, cache_layout, device: str):
    from lcc.runtime import generate_ids

    program = _on_rank_device(program, device)
    return generate_ids(program, ids, max_new_tokens, stop=set(stop), cache_layout=cache_layout)


def generate(program, ids, max_new_tokens: int, stop=(), *, ranks: int | None = None, cache_layout=None,
             device: str = "cpu", timeout_s: float = TIMEOUT_S) -> list[int]:
    """``lcc.runtime.generate_ids`` of a context-parallel ``program`` (a Program or a loaded artifact's
    runnable) in ``ranks`` processes (default: the program's own N); rank 0's tokens."""
    ranks = ranks or program_ranks(program)
    return launch(ranks, _generate, program, ids, max_new_tokens, list(stop), cache_layout, device, device=device,
                  timeout_s=timeout_s)


def _call_on_rank(program, fn: Callable, args: tuple, kwargs: dict, device: str):
    return fn(_on_rank_device(program, device), *args, **kwargs)


def run_program(program, fn: Callable, *args, ranks: int | None = None, device: str = "cpu",
                timeout_s: float = TIMEOUT_S, **kwargs) -> Any:
    """``fn(program, *args, **kwargs)`` in the context-parallel ``program``'s ranks (default: its own N), the
    program on each rank's device; rank 0's result.  Every rank runs the same ``fn``, so the ranks issue the
    same collectives in the same order: what ``lcc eval`` runs its tasks by."""
    return launch(ranks or program_ranks(program), _call_on_rank, program, fn, args, kwargs, device, device=device,
                  timeout_s=timeout_s)


def run_entry_logits(program, ids, prompt: int):
    """:func:`entry_logits` in this process (a rank's part of it when the program is context-parallel)."""
    import torch

    from lcc.runtime import device_of, empty_cache

    dev = device_of(program)
    ids = ids.to(dev)
    with torch.inference_mode():
        full = None
        if "prefill_logits" in program.entries:
            full, *_ = program.entries["prefill_logits"](ids[:, :prompt], *empty_cache(program.cache, dev))
        out, *cache = program.entries["prefill"](ids[:, :prompt], *empty_cache(program.cache, dev))
        steps = [out[:, -1]]
        for t in range(prompt, ids.shape[1]):
            out, *cache = program.entries["decode"](ids[:, t:t + 1], torch.tensor(t, device=dev), *cache)
            steps.append(out[:, -1])
    return full, torch.stack(steps, 1)


def entry_logits(program, ids, prompt: int, *, ranks: int | None = None, timeout_s: float = TIMEOUT_S):
    """(``prefill_logits`` of ``ids[:, :prompt]`` [B, prompt, V] or None if the program lacks it, logits of
    the prefill's last token then of each teacher-forced decode step of ``ids[:, prompt:]`` [B, 1 + rest, V]),
    in the program's ranks when it is context-parallel, else in this process (what ``lcc diff`` compares)."""
    ranks = ranks or program_ranks(program)
    if ranks is None:
        return run_entry_logits(program, ids, prompt)
    return launch(ranks, run_entry_logits, program, ids, prompt, timeout_s=timeout_s)


def _run_entry(program, entry: str, inputs: tuple, layout=None):
    import torch

    from lcc.runtime import empty_cache

    layout = layout or program.cache
    with torch.inference_mode():
        out = program.entries[entry](*inputs, *empty_cache(layout, "cpu"))
    return tuple(out[:len(out) - len(layout.shapes())])


def run_entry(program, entry: str, *inputs, ranks: int | None = None, cache_layout=None,
              timeout_s: float = TIMEOUT_S) -> tuple:
    """The outputs of ``entry(*inputs, *empty cache)`` other than the cache, run in the context-parallel
    program's ranks (rank 0's; every rank returns the same): what ``lcc diff`` reads of each stage, and what
    ``lcc compile`` checks a lowered artifact by (a loaded artifact: give ``ranks`` and its ``cache_layout``)."""
    return launch(ranks or program_ranks(program), _run_entry, program, entry, inputs, cache_layout,
                  timeout_s=timeout_s)

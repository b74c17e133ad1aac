"""Measure this machine's profile: fp32 matmul FLOP/s, vector (elementwise) rate and copy bandwidth.

The CPU is timed with torch at its current thread count, best of several repeats (the
machine may be shared: the best run is the closest to what it can do); a CUDA device,
when present, is timed the same way for float32, bfloat16 and float16 matmuls.  The CPU's
link is the gloo loopback between two local ranks (:func:`lcc.cost.comm.measure_loopback`:
all-gather bandwidth and per-message latency), what context-parallel runs on this machine use.
Profiles are written to ``~/.cache/lcc/profiles/{cpu,gpu}.toml``.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import replace

import torch

from lcc.cost.hardware import Profile, parse_profile, to_toml, user_dir

METHOD = 2  # bumped when what is measured changes: a saved profile of another method is measured again


def _best(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _cpu_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def calibrate_cpu(quick: bool = False) -> Profile:
    n = 1024 if quick else 2048
    repeats = 3 if quick else 5
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t_mm = _best(lambda: torch.mm(a, b, out=out), repeats)
    # the vector rate as the cost rules count it: a softmax is 5 FLOPs per element (max, sub, exp, sum,
    # div), timed on 16 MiB rows: the size of the layers' vector work, and long enough per call that the
    # threads' wake-up (milliseconds on a busy machine) does not pass for arithmetic
    x = torch.randn(4096, 1024)
    y = torch.empty_like(x)
    reps = 3
    t_vec = _best(lambda: [torch.softmax(x, -1, out=y) for _ in range(reps)], repeats) / (5 * reps)
    big = torch.ones((64 if quick else 256) << 20 >> 2)  # 64/256 MiB of float32: far past the caches,
    dst = torch.ones_like(big)  # the size of the attention score chunks the CPU paths stream through
    t_copy = _best(lambda: dst.copy_(big), repeats)
    threads = torch.get_num_threads()
    return Profile(
        name="cpu", kind="cpu", description=f"{_cpu_name()}, {threads} torch threads",
        memory_bytes=_cpu_memory(), bandwidth=2 * big.numel() * 4 / t_copy,
        matmul={"float32": 2 * n**3 / t_mm}, vector={"float32": x.numel() / t_vec},
        source="measured by lcc.cost.calibrate (torch.mm, torch.softmax on 16 MiB, Tensor.copy_)",
        measured={"date": time.strftime("%Y-%m-%d"), "threads": threads, "torch": torch.__version__,
                  "matmul_n": n, "method": METHOD})


def calibrate_cuda(quick: bool = False) -> Profile:
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    n = 4096 if quick else 8192
    matmul = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        matmul[str(dtype).removeprefix("torch.")] = 2 * n**3 / _best(lambda: a @ b, 5, sync)
        del a, b
    x = torch.randn(1 << 26, device=dev)
    y = torch.empty_like(x)
    t_copy = _best(lambda: y.copy_(x), 10, sync)
    t_vec = _best(lambda: torch.exp(x, out=y), 10, sync)
    props = torch.cuda.get_device_properties(0)
    return Profile(
        name="gpu", kind="cuda", description=props.name, memory_bytes=int(props.total_memory),
        bandwidth=2 * x.numel() * 4 / t_copy, matmul=matmul, vector={"float32": x.numel() / t_vec},
        source="measured by lcc.cost.calibrate (torch matmul, torch.exp, Tensor.copy_ on the device)",
        measured={"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "matmul_n": n,
                  "method": METHOD})


def with_loopback(profile: Profile, quick: bool = False) -> Profile:
    """``profile`` with its link measured: gloo all-gathers between 2 local ranks (16 / 64 MiB per rank for
    the bandwidth, one float for the latency).  A machine where the ranks cannot start keeps the assumed
    link (:data:`lcc.cost.comm.LOOPBACK`), and ``measured["link"]`` says why."""
    from lcc.cost.comm import measure_loopback
    from lcc.distributed.launch import launch, under_torchrun

    if under_torchrun():  # a rank of a running group: its launcher's ranks are not ours to start
        return replace(profile, measured={**profile.measured, "link": "not measured: inside a torchrun rank"})
    try:
        bandwidth, latency = launch(2, measure_loopback, 16 if quick else 64, timeout_s=60)
    except Exception as e:  # noqa: BLE001  (recorded, not silent: the profile says the link is assumed)
        return replace(profile, measured={**profile.measured, "link": f"not measured: {type(e).__name__}"})
    return replace(profile, link="gloo TCP loopback, 2 local ranks (measured)", link_bandwidth=bandwidth,
                   link_latency=latency)


def calibrate(save: bool = True, quick: bool = False, link: bool = True) -> list[Profile]:
    """Measure the CPU, with its loopback link unless ``link`` is False (and the CUDA device if there is one);
    save each as a profile; return them."""
    cpu = calibrate_cpu(quick)
    profiles = [with_loopback(cpu, quick) if link else cpu]
    if torch.cuda.is_available():
        profiles.append(calibrate_cuda(quick))
    if save:
        user_dir().mkdir(parents=True, exist_ok=True)
        for p in profiles:
            path = user_dir() / f"{p.name}.toml"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(to_toml(p, f"measured on this machine by `lcc calibrate`; {p.description}"))
            tmp.replace(path)
    return profiles


def calibrate_isolated(quick: bool = False) -> list[Profile]:
    """:func:`calibrate` (saving the profiles) in a child process, for first use inside another command.

    Run in process, the calibration's large matmuls, softmaxes and copies left the CPU's numeric state
    changed for the rest of the process: on this project's 2-core machine a first ``lcc compile`` then
    saw smollm2's captured program differ from HF eager by 9e-3 in the logits (0 without it; the cause
    inside torch / the BLAS was not found). A child process cannot leave anything behind.
    The link is not measured here (starting two ranks takes seconds, tens of them on a loaded machine): the
    profile keeps the assumed loopback until `lcc calibrate` measures it.
    """
    import subprocess
    import sys

    code = f"from lcc.cost.calibrate import calibrate; calibrate(save=True, quick={bool(quick)}, link=False)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"calibration failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return [parse_profile(p.read_text(), p.stem) for p in sorted(user_dir().glob("*.toml"))
            if p.stem in ("cpu", "gpu")]

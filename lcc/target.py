"""Where an artifact runs (``--target``) and what the planner prices (``--profile``): two flags, one module.

``--target cpu|cuda[:sm_80|sm_90]`` is the execution target: recorded in ``lcc.json``; the ONNX
provider, the TVM arch and the Triton arch follow it; ``lcc run`` / ``lcc eval`` of an artifact check
that this machine can run it.  ``--profile NAME`` is the planner's hardware profile
(:mod:`lcc.cost.hardware`); it defaults to the target's: ``cpu`` for a CPU target; for a cuda target
the calibrated local GPU (``gpu``) when this machine has one, else ``h100``.  ``--device`` was both;
it stays one release as an alias that says which of the two it now means (:func:`device_alias`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lcc.errors import UsageError

ARCHS = ("sm_80", "sm_90")


@dataclass(frozen=True)
class Target:
    kind: str  # "cpu" or "cuda"
    arch: str | None = None  # cuda only: "sm_80" / "sm_90"; None = the local GPU's (or sm_90 without one)

    def __str__(self) -> str:
        return self.kind if self.arch is None else f"{self.kind}:{self.arch}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def resolved_arch(self) -> str:
        """The arch to build for: the given one, else the local GPU's, else sm_90 (the H100 / H200)."""
        if self.arch is not None:
            return self.arch
        local = local_arch()
        return local if local in ARCHS else "sm_90"


def parse_target(text: str | None, flag: str = "--target") -> Target:
    """``cpu``, ``cuda``, ``cuda:sm_80`` or ``cuda:sm_90`` (None is ``cpu``); a usage error otherwise."""
    if text is None:
        return Target("cpu")
    kind, colon, arch = text.strip().lower().partition(":")
    if kind == "cpu" and not colon:
        return Target("cpu")
    if kind == "cuda" and (not colon or arch in ARCHS):
        return Target("cuda", arch or None)
    raise UsageError(f"{flag} {text}: give cpu, cuda, cuda:sm_80 or cuda:sm_90")


def local_arch() -> str | None:
    """``sm_XY`` of this machine's first CUDA device, None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def default_profile(target: Target) -> str:
    """The planner's profile for ``target``: ``cpu``; or the local GPU's calibrated ``gpu``, else ``h100``."""
    if not target.is_cuda:
        return "cpu"
    return "gpu" if local_arch() is not None else "h100"


def check_runnable(target: Target, what: str) -> None:
    """Usage error unless this machine can run ``what`` (an artifact, a command) built for ``target``."""
    if not target.is_cuda:
        return
    arch = local_arch()
    if arch is None:
        raise UsageError(f"{what} is built for {target}, and this machine has no CUDA device; run it on a GPU "
                         "machine or recompile it with --target cpu")
    if target.arch is not None and target.arch != arch:
        raise UsageError(f"{what} is built for {target.arch}, and this GPU is {arch}; recompile it with "
                         f"--target cuda:{arch}" if arch in ARCHS else f"{what} is built for {target.arch}, and "
                         f"this GPU is {arch}, which lcc does not build for ({', '.join(ARCHS)})")


def device_alias(device: str | None, profile: str | None, target: str | None, means: str) -> tuple:
    """(profile, target) with the deprecated ``--device`` folded in as ``means`` ("profile" or "target").

    Prints once, on stderr, which flag ``--device`` now is; both given is a usage error."""
    if device is None:
        return profile, target
    import sys

    new = f"--{means}"
    if (profile if means == "profile" else target) is not None:
        raise UsageError(f"--device {device} and {new} both given: --device is the old name of {new}; give {new}")
    print(f"lcc: note: --device is now {new} ({'the planner hardware profile' if means == 'profile' else 'where it runs'}"
          f"); --device {device} is read as {new} {device}, for one more release", file=sys.stderr)
    return (device, target) if means == "profile" else (profile, device)

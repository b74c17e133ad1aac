"""Hardware profiles: peak FLOP/s per dtype (matrix units and vector units), memory bandwidth and size,
and the link between devices (bandwidth per direction, latency per message) that prices collectives.

Built-in profiles are TOML files in ``lcc/cost/profiles`` with their datasheet sources;
``cpu`` (and ``gpu`` for the CUDA device present) are measured by :func:`lcc.cost.calibrate`
and saved under ``~/.cache/lcc/profiles`` (``$LCC_CACHE/profiles``), which also overrides a
built-in of the same name.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lcc.errors import UsageError

BUILTIN_DIR = Path(__file__).parent / "profiles"
MEASURED = ("cpu", "gpu")


def user_dir() -> Path:
    from lcc.models.loader import cache_dir

    return cache_dir() / "profiles"


# torch dtype name -> the profile key its peak is listed under
DTYPE_KEYS = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16", "float16": "float16",
              "half": "float16", "float64": "float64", "int8": "int8", "uint8": "int8"}


@dataclass(frozen=True)
class Profile:
    """One device: peak matmul and vector FLOP/s by dtype, memory bandwidth (bytes/s) and memory (bytes)."""

    name: str
    kind: str  # "cpu" or "cuda": which implementations an op's algo runs on it
    description: str
    memory_bytes: int
    bandwidth: float
    matmul: dict[str, float] = field(default_factory=dict)
    vector: dict[str, float] = field(default_factory=dict)
    source: str = ""
    measured: dict = field(default_factory=dict)
    # the link to the other devices of a context-parallel group: name, bytes/s per direction, seconds per message
    # (0: not listed; lcc.cost.comm then assumes PCIe for a GPU and the loopback default for the CPU)
    link: str = ""
    link_bandwidth: float = 0.0
    link_latency: float = 0.0

    def peak_flops(self, unit: str, dtype: str) -> float:
        table = self.matmul if unit == "matmul" else self.vector
        key = DTYPE_KEYS.get(dtype, "float8" if dtype.startswith("float8") else dtype)
        return table.get(key) or table.get("float32") or next(iter(table.values()))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "memory_bytes": self.memory_bytes, "bandwidth": self.bandwidth, "matmul": dict(self.matmul),
                "vector": dict(self.vector), "source": self.source, "measured": dict(self.measured),
                "link": self.link, "link_bandwidth": self.link_bandwidth, "link_latency": self.link_latency}


def parse_profile(text: str, name: str) -> Profile:
    d = tomllib.loads(text)
    link = d.get("link", {})
    try:
        return Profile(name=d.get("name", name), kind=d["kind"], description=d.get("description", ""),
                       memory_bytes=int(d["memory_bytes"]), bandwidth=float(d["bandwidth"]),
                       matmul={k: float(v) for k, v in d["matmul"].items()},
                       vector={k: float(v) for k, v in d["vector"].items()}, source=d.get("source", ""),
                       measured=d.get("measured", {}), link=link.get("name", ""),
                       link_bandwidth=float(link.get("bandwidth", 0.0)), link_latency=float(link.get("latency", 0.0)))
    except KeyError as e:
        raise UsageError(f"profile {name}: missing field {e}; see lcc/cost/profiles/h100.toml for the format")


def to_toml(p: Profile, comment: str = "") -> str:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f'name = "{p.name}"', f'kind = "{p.kind}"', f'description = "{p.description}"',
              f'source = "{p.source}"', f"memory_bytes = {int(p.memory_bytes)}", f"bandwidth = {p.bandwidth:.6g}"]
    for table in ("matmul", "vector", "measured"):
        lines.append(f"\n[{table}]")
        for k, v in getattr(p, table).items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v:.6g}" if isinstance(v, float)
                         else f"{k} = {v}")
    if p.link_bandwidth:
        lines += ["\n[link]", f'name = "{p.link}"', f"bandwidth = {p.link_bandwidth:.6g}",
                  f"latency = {p.link_latency:.6g}"]
    return "\n".join(lines) + "\n"


def available() -> list[str]:
    names = {p.stem for p in BUILTIN_DIR.glob("*.toml")} | set(MEASURED[:1])
    if user_dir().is_dir():
        names |= {p.stem for p in user_dir().glob("*.toml")}
    return sorted(names)


def _stale(profile: Profile) -> bool:
    from lcc.cost.calibrate import METHOD

    return profile.measured.get("method") != METHOD


def load_profile(name: str, calibrate_missing: bool = True) -> Profile:
    """A profile by name; ``cpu`` is measured on first use (a few seconds) and cached."""
    if isinstance(name, Profile):
        return name
    key = str(name).strip().lower()
    for path in (user_dir() / f"{key}.toml", BUILTIN_DIR / f"{key}.toml"):
        if path.is_file():
            profile = parse_profile(path.read_text(), key)
            if key in MEASURED and calibrate_missing and _stale(profile):
                break  # measured by an older lcc.cost.calibrate: measure again
            return profile
    if key in MEASURED and calibrate_missing:
        from lcc.cost.calibrate import calibrate_isolated

        for p in calibrate_isolated():
            if p.name == key:
                return p
        raise UsageError(f"profile {name!r}: no CUDA device here to calibrate; profiles: {', '.join(available())}")
    raise UsageError(f"unknown profile {name!r}; profiles: {', '.join(available())} "
                     "(cpu is measured here by `lcc calibrate`)")

"""Hardware profiles: the shipped datasheet profiles, errors for unknown devices, calibration round trip."""

import pytest

from lcc.cost.hardware import BUILTIN_DIR, load_profile
from lcc.errors import UsageError

BUILTINS = ("h100", "h200", "a100-80gb", "l40s", "rtx4090")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profiles_load_and_cite_a_source(name):
    p = load_profile(name)
    assert p.kind == "cuda" and p.memory_bytes > 16 * 2**30 and p.bandwidth > 5e11
    assert p.peak_flops("matmul", "bfloat16") >= p.peak_flops("matmul", "float32")
    text = (BUILTIN_DIR / f"{name}.toml").read_text()
    assert "Source:" in text and "http" in text


def test_unknown_device_is_a_usage_error_naming_the_devices():
    with pytest.raises(UsageError, match="h100"):
        load_profile("tpu-v9")


def test_calibrate_writes_a_cpu_profile_that_load_profile_reads(tmp_path, monkeypatch):
    from lcc.cost.calibrate import calibrate

    monkeypatch.setenv("LCC_CACHE", str(tmp_path))
    (cpu, *_) = calibrate(quick=True)
    assert (tmp_path / "profiles" / "cpu.toml").is_file()
    again = load_profile("cpu")
    assert again.kind == "cpu" and again.matmul["float32"] == pytest.approx(cpu.matmul["float32"], rel=1e-5)
    assert cpu.matmul["float32"] > 1e8 and cpu.bandwidth > 1e8 and cpu.memory_bytes > 2**30
    # the gloo loopback link between 2 local ranks is measured, written and read back ...
    assert "measured" in again.link and again.link_bandwidth == pytest.approx(cpu.link_bandwidth, rel=1e-5)
    assert again.link_bandwidth > 1e6 and 0 < again.link_latency < 1
    # ... and prices the CPU's collectives: the ring all-gather time of one K/V exchange by hand
    from lcc.cost import comm

    kv = comm.Collective("kv", comm.L * (comm.N - 1) / comm.N * 1024, 3)
    want = 3 * (4096 * 1 / 2 * 1024 / again.link_bandwidth + 1 * again.link_latency)
    assert float(comm.comm_time([kv], again).subs({comm.L: 4096, comm.N: 2})) == pytest.approx(want, rel=1e-9)


def test_a_cpu_profile_from_an_older_calibration_is_measured_again(tmp_path, monkeypatch):
    from lcc.cost.calibrate import METHOD

    monkeypatch.setenv("LCC_CACHE", str(tmp_path))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cpu.toml").write_text(
        'name = "cpu"\nkind = "cpu"\nmemory_bytes = 1000000000\nbandwidth = 1e9\n'
        "[matmul]\nfloat32 = 1e9\n[vector]\nfloat32 = 1.75e7\n[measured]\nthreads = 2\n")
    p = load_profile("cpu")
    assert p.measured["method"] == METHOD and p.memory_bytes > 2**30
    again = load_profile("cpu")  # saved: the next load reads it back
    assert again.vector["float32"] == pytest.approx(p.vector["float32"], rel=1e-5)


def test_first_use_calibration_runs_in_a_child_process_and_saves_the_profile(tmp_path, monkeypatch):
    """In process it left the CPU's numeric state changed for the rest of a compile (captured vs eager 9e-3)."""
    from lcc.cost.calibrate import calibrate_isolated

    monkeypatch.setenv("LCC_CACHE", str(tmp_path))
    (cpu,) = [p for p in calibrate_isolated(quick=True) if p.name == "cpu"]
    assert cpu.matmul["float32"] > 0 and (tmp_path / "profiles" / "cpu.toml").is_file()
    assert cpu.measured["matmul_n"] == 1024  # the quick measurement, made by the child and read back here

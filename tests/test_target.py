"""``--target`` (where an artifact runs) and ``--profile`` (what the planner prices), and the old ``--device``."""

import pytest
import torch

from lcc.errors import UsageError
from lcc.target import Target, check_runnable, default_profile, device_alias, parse_target


@pytest.mark.parametrize("text,want", [(None, Target("cpu")), ("cpu", Target("cpu")), ("CUDA", Target("cuda")),
                                       ("cuda:sm_80", Target("cuda", "sm_80")), ("cuda:sm_90", Target("cuda", "sm_90"))])
def test_targets(text, want):
    assert parse_target(text) == want
    assert str(parse_target(str(want))) == str(want)  # round trip through the manifest's spelling


@pytest.mark.parametrize("text", ["gpu", "cuda:sm_70", "cpu:sm_80", "cuda:", "tpu", ""])
def test_bad_targets(text):
    with pytest.raises(UsageError, match="give cpu, cuda, cuda:sm_80 or cuda:sm_90"):
        parse_target(text)


def test_default_profile_follows_the_target():
    assert default_profile(Target("cpu")) == "cpu"
    assert default_profile(Target("cuda")) == ("gpu" if torch.cuda.is_available() else "h100")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_artifact_is_refused_without_cuda():
    check_runnable(Target("cpu"), "out/a")
    with pytest.raises(UsageError, match="no CUDA device"):
        check_runnable(Target("cuda", "sm_90"), "out/a")


def test_device_alias_says_what_it_now_means(capsys):
    assert device_alias("h200", None, None, "profile") == ("h200", None)
    assert "--device is now --profile" in capsys.readouterr().err
    assert device_alias("cuda", None, None, "target") == (None, "cuda")
    assert "--device is now --target" in capsys.readouterr().err
    assert device_alias(None, "cpu", "cpu", "profile") == ("cpu", "cpu") and capsys.readouterr().err == ""
    with pytest.raises(UsageError, match="both given"):
        device_alias("h100", "h200", None, "profile")

import pytest

from lcc.errors import UsageError
from lcc.lengths import format_length, parse_length, parse_lengths


@pytest.mark.parametrize("text,value", [("128k", 131072), ("1m", 1048576), ("4096", 4096), ("8K", 8192), (" 2k ", 2048)])
def test_length_units_are_powers_of_two(text, value):
    assert parse_length(text) == value


@pytest.mark.parametrize("text", ["12q", "0", "-5", "", "1.5k", "k", "128kb"])
def test_bad_lengths_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_length(text)


def test_length_lists_and_formatting_round_trip():
    assert parse_lengths("4k,8k,16k") == [4096, 8192, 16384]
    assert [format_length(n) for n in (131072, 1048576, 1000)] == ["128k", "1m", "1000"]

"""The TVM backend emits float32 only and says why half precision is refused."""

import pytest

from lcc.backends import check_dtype
from lcc.errors import UsageError


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_refused_in_one_line_with_the_reason(dtype):
    from lcc.backends.tvm import BACKEND

    with pytest.raises(UsageError, match=rf"^--dtype {dtype}: the tvm backend emits float32 \(TVM's torch") as e:
        check_dtype(BACKEND, dtype)
    assert "\n" not in str(e.value)
    check_dtype(BACKEND, "float32")

"""Converters for ATen ops that TVM's frontend lacks or gets wrong for lcc programs.

The decode cache write is ``index_copy`` along the sequence dimension: TVM 0.27 has no
converter for it, and imports ``index_put`` with ``None`` entries (what it decomposes into)
with too few, wrongly broadcast index tensors.  Both are ``scatter_elements`` along that
dimension with the 1-D index broadcast to the source's shape; other ``index_put`` forms go to
TVM's own converter.
"""

from __future__ import annotations

from tvm.relax import op as R

from lcc.backends.tvm.nodes import shape


def _scatter_rows(importer, data, axis: int, index, source, reduction: str):
    """``data`` with ``data[..., index[k], ...] = source[..., k, ...]`` along ``axis`` (or +=)."""
    e = importer.block_builder.emit
    rank = len(shape(data))
    axis = axis % rank
    index = e(R.astype(index, "int64"))
    updates = shape(data)[:axis] + shape(index) + shape(data)[axis + 1:]
    source = e(R.broadcast_to(source, updates))
    index = e(R.reshape(index, [1] * axis + shape(index) + [1] * (rank - axis - 1)))
    index = e(R.broadcast_to(index, updates))
    return e(R.scatter_elements(data, index, source, axis=axis, reduction=reduction))


def convert_index_copy(node, importer):
    data, axis, index, source = node.args[:4]
    env = importer.env
    return _scatter_rows(importer, env[data], int(axis), env[index], env[source], "update")


def convert_index_put(node, importer):
    args = list(node.args) + [node.kwargs.get("accumulate", False)] * (4 - len(node.args))
    indices = list(args[1])
    given = [i for i, x in enumerate(indices) if x is not None]
    if len(given) != 1 or len(shape(importer.env[indices[given[0]]])) != 1:
        return importer._index_put(node)  # TVM's own handling covers full and multi-index forms
    env = importer.env
    return _scatter_rows(importer, env[args[0]], given[0], env[indices[given[0]]], env[args[2]],
                         "add" if args[3] else "update")


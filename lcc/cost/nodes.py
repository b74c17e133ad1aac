"""Per-node cost of ATen ops: FLOPs, bytes moved, bytes allocated, and whether a node aliases its input.

Conventions (ATen semantics as the torch runtime executes them):

- matmul family (``linear``, ``mm``, ``bmm``, ``matmul``, ``addmm``, ``baddbmm``): 2*M*N*K FLOPs;
- elementwise and reductions: one FLOP per element (output for elementwise, input for
  reductions; softmax a few per element);
- bytes moved: every tensor input read once (its stored elements: a broadcast ``expand``
  is read once, not per copy) plus the output written once;
- views (``view``, ``transpose``, ``expand``, ``slice`` ...) move nothing and alias their
  input; ``to``/``contiguous``/``reshape`` alias when they would not copy;
- out-of-place scatters (``slice_scatter``, ``index_copy``) copy their whole base.

Ops without a rule are priced as elementwise over their output and listed in
``ProgramCost.unpriced`` so a new op never disappears silently.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Callable

import sympy
import torch
import torch.fx

from lcc.cost.symbols import ZERO, prod


@dataclass(frozen=True)
class Kernel:
    """One unit of work for the roofline: FLOPs on ``unit`` ("matmul" or "vector") and bytes moved."""

    flops: sympy.Expr
    bytes: sympy.Expr
    unit: str = "vector"
    dtype: str = "float32"


@dataclass
class NodeCost:
    """A node's kernels, the bytes it allocates, what it aliases, and its transient working set."""

    name: str
    op: str
    layer: int | None = None
    kernels: tuple[Kernel, ...] = ()
    out_bytes: sympy.Expr = ZERO  # new storage the node returns (0 for views)
    alias: str | None = None  # the input node whose storage the output shares
    work: sympy.Expr = ZERO  # bytes held only while the node runs, beyond its output
    note: str = ""

    @property
    def flops(self) -> sympy.Expr:
        return sympy.Add(*(k.flops for k in self.kernels)) if self.kernels else ZERO

    @property
    def bytes(self) -> sympy.Expr:
        return sympy.Add(*(k.bytes for k in self.kernels)) if self.kernels else ZERO


@dataclass
class Ctx:
    """What a rule may ask about nodes: symbolic shapes, bytes and the target device kind."""

    shapes: dict = field(default_factory=dict)  # node name -> tuple of sympy dims (a list of them for tuples)
    device: str = "cpu"  # "cpu" or "cuda": picks the implementation an lcc op's algo names
    prefill: bool = False  # keys of self-attention over the sequence become the symbol K

    def shape(self, node) -> tuple:
        s = self.shapes[node.name]
        return s[0] if isinstance(s, list) else s

    def numel(self, node) -> sympy.Expr:
        return _product(tuple(self.shape(node)))

    def dtype(self, node) -> torch.dtype:
        val = node.meta["val"]
        return val[0].dtype if isinstance(val, (list, tuple)) else val.dtype

    def itemsize(self, node) -> int:
        return self.dtype(node).itemsize

    def nbytes(self, node) -> sympy.Expr:
        s, val = self.shapes[node.name], node.meta["val"]
        if isinstance(s, list):
            return _sum(tuple(_sized(tuple(d), v.dtype.itemsize) for d, v in zip(s, val)))
        return _sized(tuple(s), val.dtype.itemsize)

    def keys(self, node, Sk) -> sympy.Expr:
        """The key length an attention reads: in prefill the sequence symbol L stands for K there."""
        from lcc.cost.symbols import K, L

        return sympy.sympify(Sk).xreplace({L: K}) if self.prefill else Sk

    def stored_bytes(self, node) -> sympy.Expr:
        """Bytes a read of this tensor touches: broadcast (stride-0) dims count once."""
        val = node.meta["val"]
        shape = self.shape(node)
        try:
            strides = val.stride()
        except (RuntimeError, AttributeError):
            return self.nbytes(node)
        dims = tuple(d for d, s in zip(shape, strides) if not (isinstance(s, int) and s == 0))
        return _sized(dims, self.itemsize(node))


# sympy products and sums of the same few shapes, taken by every layer of every candidate the planner prices:
# each built once (the expressions are immutable; equal inputs give equal expressions)
@functools.lru_cache(maxsize=1 << 16)
def _product(dims: tuple) -> sympy.Expr:
    return prod(dims)


@functools.lru_cache(maxsize=1 << 16)
def _sized(dims: tuple, itemsize: int) -> sympy.Expr:
    return _product(dims) * itemsize


@functools.lru_cache(maxsize=1 << 16)
def _sum(terms: tuple) -> sympy.Expr:
    return sympy.Add(*terms)


def is_tensor_node(a) -> bool:
    return isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)


def tensor_args(node) -> list[torch.fx.Node]:
    out = []
    for a in list(node.args) + list(node.kwargs.values()):
        for x in (a if isinstance(a, (list, tuple)) else [a]):
            if is_tensor_node(x) and x not in out:
                out.append(x)
    return out


def op_name(target) -> tuple[str, str]:
    """(namespace, name) of an op overload: ``aten.view.default`` -> ("aten", "view")."""
    if target is operator.getitem:
        return "python", "getitem"
    parts = str(target).split(".")
    return (parts[0], parts[1]) if len(parts) >= 2 else ("python", str(target))


def _dtype_name(ctx: Ctx, node) -> str:
    return str(ctx.dtype(node)).removeprefix("torch.")


def _io_bytes(ctx: Ctx, node) -> sympy.Expr:
    return _sum((_sum(tuple(ctx.stored_bytes(a) for a in tensor_args(node))), ctx.nbytes(node)))


def elementwise(node, ctx: Ctx, per_element: int = 1) -> NodeCost:
    return NodeCost(node.name, "", kernels=(Kernel(per_element * ctx.numel(node), _io_bytes(ctx, node), "vector",
                                                   _dtype_name(ctx, node)),), out_bytes=ctx.nbytes(node))


def reduction(node, ctx: Ctx, per_element: int = 1) -> NodeCost:
    src = tensor_args(node)[0]
    return NodeCost(node.name, "", kernels=(Kernel(per_element * ctx.numel(src), _io_bytes(ctx, node), "vector",
                                                   _dtype_name(ctx, node)),), out_bytes=ctx.nbytes(node))


def view(node, ctx: Ctx) -> NodeCost:
    src = tensor_args(node)
    return NodeCost(node.name, "", alias=src[0].name if src else None)


def free(node, ctx: Ctx) -> NodeCost:
    return NodeCost(node.name, "")


def copy(node, ctx: Ctx) -> NodeCost:
    return NodeCost(node.name, "", kernels=(Kernel(ZERO, _io_bytes(ctx, node), "vector", _dtype_name(ctx, node)),),
                    out_bytes=ctx.nbytes(node))


def fill(node, ctx: Ctx) -> NodeCost:
    """A factory (arange, zeros, full): writes its output."""
    return NodeCost(node.name, "", kernels=(Kernel(ctx.numel(node), ctx.nbytes(node), "vector",
                                                   _dtype_name(ctx, node)),), out_bytes=ctx.nbytes(node))


def empty(node, ctx: Ctx) -> NodeCost:
    return NodeCost(node.name, "", out_bytes=ctx.nbytes(node))


def to_copy(node, ctx: Ctx) -> NodeCost:
    """``to``/``contiguous``/``reshape`` return their input when nothing changes, else copy."""
    src = tensor_args(node)[0]
    a, b = src.meta["val"], node.meta["val"]
    same_dtype = a.dtype == b.dtype and a.device == b.device
    contiguous = _contiguous(a)
    name = op_name(node.target)[1]
    if name == "to" and same_dtype and not node.kwargs.get("copy", False):
        return view(node, ctx)
    if name in ("contiguous", "reshape") and contiguous:
        return view(node, ctx)
    return copy(node, ctx)


def _contiguous(val) -> bool:
    try:
        return bool(val.is_contiguous())
    except Exception:  # data-dependent strides: assume a copy
        return False


def matmul_like(node, ctx: Ctx) -> NodeCost:
    """2*M*N*K with K the contracted dim, read from the operands' shapes."""
    name = op_name(node.target)[1]
    args = [a for a in node.args if is_tensor_node(a)]
    if name == "linear":
        x = args[0]
        k = ctx.shape(x)[-1]
        flops = 2 * ctx.numel(node) * k + (ctx.numel(node) if len(args) > 2 else 0)
    elif name in ("addmm", "baddbmm", "addbmm"):
        a = args[1]
        flops = 2 * ctx.numel(node) * ctx.shape(a)[-1] + ctx.numel(node)
    else:  # mm, bmm, matmul: the first operand's last dim is contracted
        a = args[0]
        flops = 2 * ctx.numel(node) * (ctx.shape(a)[-1] if len(ctx.shape(a)) else 1)
    return NodeCost(node.name, "", kernels=(Kernel(flops, _io_bytes(ctx, node), "matmul", _dtype_name(ctx, node)),),
                    out_bytes=ctx.nbytes(node))


def embedding(node, ctx: Ctx) -> NodeCost:
    ids = tensor_args(node)[1]
    moved = 2 * ctx.nbytes(node) + ctx.nbytes(ids)
    return NodeCost(node.name, "", kernels=(Kernel(ZERO, moved, "vector", _dtype_name(ctx, node)),),
                    out_bytes=ctx.nbytes(node))


def scatter_copy(node, ctx: Ctx) -> NodeCost:
    """Out-of-place scatter (``slice_scatter``, ``index_copy``): copies the base, then writes the source."""
    base, *rest = tensor_args(node)
    moved = ctx.nbytes(base) + ctx.nbytes(node) + sympy.Add(*(ctx.nbytes(r) for r in rest))
    return NodeCost(node.name, "", kernels=(Kernel(ZERO, moved, "vector", _dtype_name(ctx, node)),),
                    out_bytes=ctx.nbytes(node))


def getitem(node, ctx: Ctx) -> NodeCost:
    src = node.args[0]
    return NodeCost(node.name, "", alias=src.name if isinstance(src, torch.fx.Node) else None)


VIEWS = {"view", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "select",
         "alias", "t", "as_strided", "detach", "view_as", "_reshape_alias", "unflatten", "split", "chunk",
         "narrow", "unbind", "split_with_sizes", "lift_fresh", "view_as_real", "view_as_complex", "expand_as",
         "unfold", "diagonal", "movedim", "swapaxes"}
FREE = {"sym_size", "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async",
        "sym_numel", "sym_stride", "_local_scalar_dense", "scalar_tensor"}
ELEMENTWISE = {"add", "sub", "mul", "div", "pow", "rsqrt", "sqrt", "exp", "log", "neg", "silu", "gelu", "relu",
               "sigmoid", "tanh", "where", "masked_fill", "clamp", "clamp_min", "clamp_max", "cos", "sin", "abs",
               "reciprocal", "erf", "maximum", "minimum", "eq", "ne", "lt", "gt", "le", "ge", "logical_and",
               "logical_or", "logical_not", "bitwise_and", "bitwise_or", "bitwise_not", "floor_divide",
               "remainder", "fmod", "rsub", "sign", "floor", "ceil", "round", "trunc", "exp2", "log1p", "expm1",
               "nan_to_num", "lerp", "addcmul", "addcdiv", "square", "hardtanh", "leaky_relu", "elu", "softplus",
               "mish", "tril", "triu", "cat", "stack", "repeat", "pad", "constant_pad_nd", "flip", "roll",
               "index_select", "gather", "index", "type_as", "bernoulli", "dropout", "native_dropout"}
ELEMENTWISE_FLOPS = {"silu": 4, "gelu": 8, "sigmoid": 4, "tanh": 4, "exp": 1, "erf": 4}
REDUCTIONS = {"mean": 1, "sum": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "var": 2, "std": 2, "argmax": 1,
              "argmin": 1, "norm": 2, "prod": 1, "any": 1, "all": 1, "cumsum": 1, "logsumexp": 4,
              "_softmax": 5, "softmax": 5, "_log_softmax": 5, "log_softmax": 5, "var_mean": 3,
              "native_layer_norm": 8, "layer_norm": 8, "rms_norm": 4, "_fused_rms_norm": 4, "group_norm": 8}
COPIES = {"clone", "_to_copy", "copy", "lift_fresh_copy", "_to_dtype", "fill", "zeros_like", "ones_like",
          "full_like", "empty_like"}
FACTORIES = {"arange", "zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "rand", "randn",
             "randint", "linspace", "eye"}
EMPTY = {"empty", "new_empty", "empty_strided", "empty_permuted"}
MATMUL = {"linear", "mm", "bmm", "matmul", "addmm", "baddbmm", "addbmm"}
SCATTERS = {"slice_scatter", "index_copy", "index_put", "scatter", "select_scatter", "index_add", "scatter_add",
            "masked_scatter", "diagonal_scatter", "as_strided_scatter"}

# (namespace, op name) -> rule(node, ctx) -> NodeCost; lcc ops register theirs in lcc.cost.ops
RULES: dict[tuple[str, str], Callable[[torch.fx.Node, Ctx], NodeCost]] = {}
for _n in VIEWS:
    RULES[("aten", _n)] = view
for _n in FREE:
    RULES[("aten", _n)] = free
for _n in ELEMENTWISE:
    RULES[("aten", _n)] = (lambda k: lambda node, ctx: elementwise(node, ctx, k))(ELEMENTWISE_FLOPS.get(_n, 1))
for _n, _k in REDUCTIONS.items():
    RULES[("aten", _n)] = (lambda k: lambda node, ctx: reduction(node, ctx, k))(_k)
for _n in COPIES:
    RULES[("aten", _n)] = copy
for _n in FACTORIES:
    RULES[("aten", _n)] = fill
for _n in EMPTY:
    RULES[("aten", _n)] = empty
for _n in MATMUL:
    RULES[("aten", _n)] = matmul_like
for _n in SCATTERS:
    RULES[("aten", _n)] = scatter_copy
for _n in ("to", "contiguous", "reshape", "flatten"):
    RULES[("aten", _n)] = to_copy
RULES[("aten", "embedding")] = embedding
RULES[("python", "getitem")] = getitem


def register_rule(namespace: str, name: str, rule: Callable[[torch.fx.Node, Ctx], NodeCost]) -> None:
    """Price op ``namespace.name`` with ``rule`` (e.g. a new lcc op whose cost signature is unusual)."""
    RULES[(namespace, name)] = rule


def node_cost(node: torch.fx.Node, ctx: Ctx) -> NodeCost:
    ns, name = op_name(node.target)
    rule = RULES.get((ns, name))
    if rule is None and ns == "lcc":
        from lcc.cost.ops import rule_for_lcc

        rule = rule_for_lcc(name)
    if rule is None:
        if is_tensor_node(node):
            cost = elementwise(node, ctx)
        else:
            cost = NodeCost(node.name, "")
        cost.note = "unpriced"
    else:
        cost = rule(node, ctx)
    cost.op = f"{ns}.{name}"
    return cost

"""``linear-attention``: the rewritten program against HF with a naive O(L^2) linear attention written
here, decode over the plain cache against prefill, GQA, and Performer's seeded determinism."""

import math

import pytest
import torch

from lcc.capture.export import capture
from lcc.errors import UsageError
from lcc.ops.linear_attention import orthogonal_random_features
from lcc.passes import REGISTRY, apply_passes, canonicalize
from lcc.passes.graph import ATTENTION, lcc_nodes
from tests.passes.test_sparse import hf_attention

LINEAR = torch.ops.lcc.linear_attention.default


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny("llama")  # 4 query heads over 2 KV heads: GQA


@pytest.fixture(scope="module")
def program(llama):
    return canonicalize(capture(llama, capacity=64, entries=("prefill", "decode", "prefill_full")))


def elu_phi(x, scaling):
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1, Katharopoulos et al. 2020 Sec. 3.2


def performer_phi(features, seed):
    """FAVOR+ positive random features (Choromanski et al. 2021, Lemma 1): E[phi(x).phi(y)] = exp(x.y)."""

    def phi(x, scaling):
        w = orthogonal_random_features(features, x.shape[-1], seed).double()
        x = x.double() * math.sqrt(scaling)  # exp(scaling * q.k) = exp(q'.k')
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(features)

    return phi


def naive_linear_attention(phi):
    """out_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j), one row at a time."""

    def fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        g = query.shape[1] // key.shape[1]
        fq = phi(query.double(), scaling)
        fk = phi(key.double(), scaling).repeat_interleave(g, 1)
        v = value.double().repeat_interleave(g, 1)
        rows = []
        for i in range(query.shape[2]):
            a = (fq[:, :, i : i + 1] * fk[:, :, : i + 1]).sum(-1)  # [B, H, i+1]
            rows.append((a[..., None] * v[:, :, : i + 1]).sum(2) / a.sum(-1, keepdim=True))
        return torch.stack(rows, 2).to(query.dtype).transpose(1, 2).contiguous(), None

    return fn


@pytest.mark.parametrize("text,phi", [
    ("linear-attention:feature_map=elu", elu_phi),
    ("linear-attention:feature_map=performer,features=32,seed=3", performer_phi(32, 3)),
], ids=["elu", "performer"])
def test_program_equals_hf_with_naive_linear_attention(text, phi, llama, program):
    out = apply_passes(program, [text])
    for gm in out.entries.values():
        assert not lcc_nodes(gm, ATTENTION) and len(lcc_nodes(gm, LINEAR)) == llama.spec.layers
    ids = torch.randint(0, llama.spec.vocab, (1, 24), generator=torch.Generator().manual_seed(0))
    got = out.entries["prefill_full"](ids, *out.cache.empty())[0]
    with torch.inference_mode(), hf_attention(llama.model, naive_linear_attention(phi)) as model:
        want = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    softmax = program.entries["prefill_full"](ids, *program.cache.empty())[0]
    assert float((got - softmax).abs().max()) > 1e-3  # not softmax attention any more


@pytest.mark.parametrize("text", ["linear-attention:feature_map=elu",
                                  "linear-attention:feature_map=performer,features=16"])
def test_decode_over_the_cache_agrees_with_prefill(text, program):
    """Decode sums phi(k_j) v_j over the kv_len valid cache slots: the last row of prefill, step by step."""
    from lcc.runtime import generate_ids

    out = apply_passes(program, [text])
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(5))
    new = generate_ids(out, prompt, 12)
    full = torch.cat([prompt, torch.tensor([new[:-1]])], 1)
    logits = out.entries["prefill_full"](full, *out.cache.empty())[0][0]
    assert logits[prompt.shape[1] - 1:].argmax(-1).tolist() == new
    step, *cache = out.entries["prefill"](prompt, *out.cache.empty())
    torch.testing.assert_close(step[0, -1], logits[prompt.shape[1] - 1], atol=1e-4, rtol=1e-4)
    for i, token in enumerate(new[:-1]):
        step, *cache = out.entries["decode"](torch.tensor([[token]]), torch.tensor(prompt.shape[1] + i), *cache)
        torch.testing.assert_close(step[0, 0], logits[prompt.shape[1] + i], atol=1e-4, rtol=1e-4)


def test_performer_is_reproducible_from_its_seed(program):
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(7))

    def run(seed):
        out = apply_passes(program, [f"linear-attention:feature_map=performer,features=16,seed={seed}"])
        return str(out.entries["decode"].graph), out.entries["prefill_full"](ids, *out.cache.empty())[0]

    (graph_a, a), (graph_b, b), (graph_c, c) = run(1), run(1), run(2)
    assert graph_a == graph_b and torch.equal(a, b)
    assert graph_a != graph_c and float((a - c).abs().max()) > 1e-4


def test_layers_parameter_mixes_linear_and_softmax_layers(program):
    out = apply_passes(program, ["linear-attention:layers=1"])
    gm = out.entries["prefill"]
    assert len(lcc_nodes(gm, ATTENTION)) == 1 and len(lcc_nodes(gm, LINEAR)) == 1


def test_pass_says_it_is_approximate():
    d = REGISTRY["linear-attention"]
    assert not d.exact and d.exact_if is None
    assert "changes a softmax-trained model's function" in d.doc


def test_bad_parameters_are_usage_errors(program):
    with pytest.raises(UsageError, match="is not one of elu, performer"):
        apply_passes(program, ["linear-attention:feature_map=relu"])
    with pytest.raises(UsageError, match="features=0 is out of range"):
        apply_passes(program, ["linear-attention:feature_map=performer,features=0"])


def test_same_seed_compiles_to_a_byte_identical_manifest(tmp_path, llama):
    """The projection is drawn from the seed, so the artifact records only the spec; the lowered
    program runs and says in its report that the pass is approximate."""
    from lcc.compile import compile_model
    from lcc.passes import parse_pass

    spec = parse_pass("linear-attention:feature_map=performer,features=16,seed=4")
    for name in ("a", "b"):
        compile_model(llama, 64, "torch", [spec], tmp_path / name)
    assert (tmp_path / "a" / "lcc.json").read_bytes() == (tmp_path / "b" / "lcc.json").read_bytes()
    assert "changes a softmax-trained model's function" in (tmp_path / "a" / "report.md").read_text()

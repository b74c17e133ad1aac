"""``lcc.runtime.to_device``: a program's weights and graph-created tensors moved together."""

import pytest
import torch

from lcc.capture.export import capture
from lcc.passes import apply_passes, canonicalize, parse_pass
from lcc.runtime import device_of, empty_cache, generate_ids, to_device
from tests.test_cli import lcc


def test_to_device_rewrites_graph_devices_and_leaves_the_original(tiny):
    loaded = tiny("llama")
    program = apply_passes(canonicalize(capture(loaded, capacity=64)), ["flash"])
    prompt = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    want = generate_ids(program, prompt, 10)
    created = [v for gm in program.entries.values() for n in gm.graph.nodes
               for v in (*n.args, *n.kwargs.values()) if isinstance(v, torch.device)]
    assert created and all(d.type == "cpu" for d in created)  # torch.export recorded where tensors are made
    # "meta" stands in for an accelerator: every graph-created tensor must follow the weights there
    moved = to_device(program, "meta")
    assert device_of(moved) == torch.device("meta") and device_of(program) == torch.device("cpu")
    for gm in moved.entries.values():
        assert all(p.device.type == "meta" for p in gm.parameters())
        for node in gm.graph.nodes:
            devices = [v for v in (*node.args, *node.kwargs.values()) if isinstance(v, torch.device)]
            assert all(d.type == "meta" for d in devices), node.format_node()
    assert all(p.device.type == "cpu" for gm in program.entries.values() for p in gm.parameters())
    assert generate_ids(to_device(program, "cpu"), prompt, 10) == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_eval_device_cuda_without_cuda_is_a_usage_error():
    r = lcc("eval", "tiny-llama", "--task", "ppl", "--lengths", "64", "--target", "cuda", "--text", "README.md")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--target cuda" in r.stderr, r.stderr
    # the old flag: a note saying what it now means, then the same one-line error
    r = lcc("eval", "tiny-llama", "--task", "ppl", "--lengths", "64", "--device", "cuda", "--text", "README.md")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2 and "--device is now --target" in lines[0], r.stderr


@pytest.fixture(scope="module")
def tiny_artifact(tiny, tmp_path_factory):
    """A torch-backend artifact of tiny-llama (capacity 64) with RoPE scaling and the flash path, as the quickstart."""
    from lcc.compile import compile_model

    out = tmp_path_factory.mktemp("runtime-artifact") / "a"
    compile_model(tiny("llama"), 64, "torch", [parse_pass("rope-scaling:method=dynamic-ntk,factor=4"),
                                               parse_pass("flash")], out)
    return out


def test_in_place_cache_writes_give_the_functional_graphs_logits_and_cache_over_several_steps(tiny_artifact):
    from lcc.backends.torch_export import BACKEND
    from lcc.capture.program import CacheLayout
    from lcc.artifact import load
    from lcc.runtime import empty_cache, write_cache_in_place

    loaded = BACKEND.load(tiny_artifact)
    layout = CacheLayout.from_dict(load(tiny_artifact).cache)
    prefill, decode = loaded.entries["prefill"], loaded.entries["decode"]
    in_prefill, in_decode = write_cache_in_place(prefill), write_cache_in_place(decode)
    assert not [n for n in in_decode.graph.nodes if n.target is torch.ops.aten.index_copy.default]
    assert not [n for n in in_prefill.graph.nodes if n.target is torch.ops.aten.slice_scatter.default]
    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want, *want_cache = prefill(prompt, *layout.empty())
        owned = empty_cache(layout, "cpu")
        got, *got_cache = in_prefill(prompt, *owned)
        assert all(g is o for g, o in zip(got_cache, owned))  # written in place, returned as the same tensors
        for step in range(6):
            assert torch.equal(got, want) and all(torch.equal(g, w) for g, w in zip(got_cache, want_cache))
            token, position = want[:, -1].argmax(-1).view(1, 1), torch.tensor(9 + step)
            before = [t.clone() for t in want_cache]
            want, *new_cache = decode(token, position, *want_cache)
            assert all(torch.equal(b, c) for b, c in zip(before, want_cache))  # the loaded graph stays functional
            want_cache = new_cache
            got, *got_cache = in_decode(token, position, *got_cache)
        assert torch.equal(got, want) and all(torch.equal(g, w) for g, w in zip(got_cache, want_cache))


def test_the_in_place_rewrite_leaves_the_loaded_graph_functional(tiny_artifact):
    from lcc.backends.torch_export import BACKEND
    from lcc.runtime import write_cache_in_place

    decode = BACKEND.load(tiny_artifact).entries["decode"]
    code = decode.code
    targets = {n.target for n in write_cache_in_place(decode).graph.nodes}
    assert torch.ops.aten.index_copy_.default in targets
    assert decode.code == code and torch.ops.aten.index_copy_.default not in {n.target for n in decode.graph.nodes}


def test_generate_ids_on_the_artifact_matches_greedy_steps_of_the_functional_graphs(tiny_artifact):
    from lcc.backends.torch_export import BACKEND
    from lcc.capture.program import CacheLayout
    from lcc.artifact import load

    loaded = BACKEND.load(tiny_artifact)
    layout = CacheLayout.from_dict(load(tiny_artifact).cache)
    prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        logits, *cache = loaded.entries["prefill"](prompt, *layout.empty())
        want = []
        for step in range(8):
            want.append(int(logits[0, -1].argmax()))
            logits, *cache = loaded.entries["decode"](torch.tensor([[want[-1]]]), torch.tensor(7 + step), *cache)
    assert generate_ids(loaded, prompt, 8, cache_layout=layout) == want


def test_empty_cache_is_the_layouts_zeros():
    from lcc.capture.program import CacheLayout

    layout = CacheLayout(batch=1, capacity=64, layers=2, kv_heads=3, head_dim=8)
    got, want = empty_cache(layout, "cpu"), layout.empty()
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in want]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    bf16 = CacheLayout(batch=1, capacity=64, layers=1, kv_heads=1, head_dim=8, dtype="bfloat16")
    assert [t.dtype for t in empty_cache(bf16, "cpu")] == [torch.bfloat16] * 2


@pytest.mark.parametrize("algo", ["auto", "flash", "chunked"])
@pytest.mark.parametrize("mask", ["causal", "sliding:window=5,sinks=0"])
def test_cpu_attention_reads_only_the_filled_keys(algo, mask):
    """Keys and values past ``kv_len`` hold NaN: any read of them would poison the output."""
    from lcc.ops.attention import attention_reference

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 2, 16, generator=gen)
    k, v = torch.randn(1, 2, 64, 16, generator=gen), torch.randn(1, 2, 64, 16, generator=gen)
    kv_len = 23
    k[:, :, kv_len:], v[:, :, kv_len:] = float("nan"), float("nan")
    got = torch.ops.lcc.attention(q, k, v, torch.tensor(kv_len), 0.25, mask, algo)
    want = attention_reference(q, k[:, :, :kv_len], v[:, :, :kv_len], None, 0.25, mask)  # only the filled keys
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_runtime_calls_cpu_ops_as_their_bodies_and_gives_the_dispatched_graphs_logits(tiny_artifact):
    from lcc.backends.torch_export import BACKEND
    from lcc.capture.program import CacheLayout
    from lcc.artifact import load
    from lcc.runtime import owned_entry

    loaded = BACKEND.load(tiny_artifact)
    layout = CacheLayout.from_dict(load(tiny_artifact).cache)
    decode = loaded.entries["decode"]
    owned = owned_entry(decode)
    assert owned_entry(decode) is owned  # made once per graph
    lcc_ops = [n for n in decode.graph.nodes if str(n.target).startswith("lcc.")]
    assert lcc_ops  # the loaded graph dispatches torch.ops.lcc.attention / rope
    targets = [n.target for n in owned.graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if isinstance(t, torch._ops.OpOverload) and t.namespace == "lcc"]
    assert torch.ops.aten._assert_tensor_metadata.default not in targets
    prompt = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        logits, *cache = loaded.entries["prefill"](prompt, *layout.empty())
        owned_cache = [t.clone() for t in cache]
        for step in range(4):
            token, position = logits[:, -1].argmax(-1).view(1, 1), torch.tensor(5 + step)
            logits, *cache = decode(token, position, *cache)  # through the dispatcher
            got, *owned_cache = owned(token, position, *owned_cache)
            assert torch.equal(got, logits) and all(torch.equal(g, w) for g, w in zip(owned_cache, cache))


def test_lcc_run_of_an_artifact_imports_neither_the_compiler_nor_dynamo_nor_transformers(tiny_artifact):
    """What `lcc run ARTIFACT` prints is the tokenizer's decoding of the greedy steps of the functional graphs
    (transformers' tokenizer as the oracle), and the command never imports what it does not need."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from lcc.backends.torch_export import BACKEND
    from lcc.capture.program import CacheLayout
    from lcc.artifact import load

    script = ("import sys\nfrom lcc.cli import main\nrc = main(sys.argv[1:])\n"
              "heavy = ('torch._dynamo', 'transformers', 'lcc.cost', 'lcc.compile', 'lcc.passes')\n"
              "print('IMPORTED', [m for m in heavy if m in sys.modules])\nsys.exit(rc)\n")
    prompt = "hello world"
    r = subprocess.run([sys.executable, "-c", script, "run", str(tiny_artifact), "--prompt", prompt,
                        "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text, imported = r.stdout.rsplit("IMPORTED ", 1)
    assert imported.strip() == "[]"
    tok = AutoTokenizer.from_pretrained(tiny_artifact)
    loaded, layout = BACKEND.load(tiny_artifact), CacheLayout.from_dict(load(tiny_artifact).cache)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    want = []
    with torch.inference_mode():
        logits, *cache = loaded.entries["prefill"](ids, *layout.empty())
        for step in range(6):
            want.append(int(logits[0, -1].argmax()))
            if want[-1] == tok.eos_token_id:
                break
            logits, *cache = loaded.entries["decode"](torch.tensor([[want[-1]]]), torch.tensor(ids.shape[1] + step),
                                                      *cache)
    assert text == tok.decode(want, skip_special_tokens=True) + "\n"


def test_the_plain_tokenizer_encodes_and_decodes_as_transformers(tiny_artifact, tmp_path):
    import json
    import shutil

    from transformers import AutoTokenizer

    from lcc.artifact import PlainTokenizer, load_tokenizer

    tok, want = load_tokenizer(tiny_artifact), AutoTokenizer.from_pretrained(tiny_artifact)
    assert isinstance(tok, PlainTokenizer) and tok.eos_token_id == want.eos_token_id is not None
    for text in ("hello world", "  two  spaces\nand a line", f"a {want.eos_token} special {want.bos_token} x"):
        ids = want(text)["input_ids"]
        assert tok.encode(text) == ids
        assert tok.decode(ids) == want.decode(ids, skip_special_tokens=True)
    # a setting tokenizer.json does not carry: transformers' tokenizer applies it
    other = tmp_path / "a"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_artifact / name, other / name)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "add_eos_token": True}))
    tok, want = load_tokenizer(other), AutoTokenizer.from_pretrained(other)
    assert not isinstance(tok, PlainTokenizer) and tok.encode("hello") == want("hello")["input_ids"]
    assert load_tokenizer(tmp_path) is None  # no tokenizer.json


def test_verify_remembers_a_large_files_hash_by_identity_and_rereads_a_changed_file(tiny_artifact, tmp_path,
                                                                                   monkeypatch):
    import shutil
    import time

    from lcc import integrity
    from lcc.errors import UsageError

    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    hashed = []
    real = integrity.sha256
    monkeypatch.setattr(integrity, "sha256", lambda p: hashed.append(p.name) or real(p))
    weights = art / "weights.safetensors"
    monkeypatch.setattr(integrity, "REMEMBER_BYTES", weights.stat().st_size)  # the weights only
    integrity.verify(art)  # just written: not remembered (a write in the same clock tick would keep its identity)
    integrity.verify(art)
    assert hashed.count("weights.safetensors") == 2
    monkeypatch.setattr(integrity, "SETTLE_NS", 0)
    integrity.verify(art)
    hashed.clear()
    integrity.verify(art)
    assert "weights.safetensors" not in hashed and "lcc.json" in hashed  # small files are always read
    time.sleep(0.05)  # past the file-system clock's tick
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, one bit
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="weights.safetensors does not match its SHA-256"):
        integrity.verify(art)

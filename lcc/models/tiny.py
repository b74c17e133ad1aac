"""``tiny-<family>``: seeded, random-initialised small models of each family, for tests.

Built from transformers' own config classes, so the modeling code under test is the
real one.  Sizes are chosen to exercise what matters: GQA (4 query heads, 2 KV
heads), sliding windows shorter than test sequences, qkv bias, q/k norm, partial
rotary; Gemma 2 / 3's local and global layers with their own windows and RoPE bases, soft-capping
and query scaling; Granite's multipliers.  A byte-level tokenizer is built in process (no download).
"""

from __future__ import annotations

import torch

_COMMON = dict(
    vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False,
)


def tiny_config(family: str):
    """The small transformers config of ``family`` that ``tiny-<family>`` is built from."""
    import transformers as T

    if family == "llama":
        return T.LlamaConfig(**_COMMON, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if family == "mistral":
        return T.MistralConfig(**_COMMON, head_dim=16, sliding_window=24)
    if family == "qwen2":
        return T.Qwen2Config(**{**_COMMON, "num_hidden_layers": 3}, use_sliding_window=True, sliding_window=24,
                             max_window_layers=1)
    if family == "qwen3":
        return T.Qwen3Config(**_COMMON, head_dim=16)
    if family == "phi3":
        return T.Phi3Config(**_COMMON, partial_rotary_factor=0.5)
    if family == "gpt-neox":
        c = {k: v for k, v in _COMMON.items() if k not in ("num_key_value_heads", "intermediate_size")}
        return T.GPTNeoXConfig(**c, intermediate_size=128, rotary_pct=0.25)
    if family == "gemma2":  # local / global layers, both soft-caps, query_pre_attn_scalar != head_dim, tied output
        return T.Gemma2Config(**{**_COMMON, "tie_word_embeddings": True}, head_dim=16, sliding_window=16,
                              query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    if family == "gemma3":  # 2 local : 1 global, local base 10k, global base 1M with linear x8, q/k norms
        return T.Gemma3TextConfig(
            **{**_COMMON, "num_hidden_layers": 3, "tie_word_embeddings": True}, head_dim=16, sliding_window=16,
            query_pre_attn_scalar=24, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}})
    if family == "olmo2":  # q/k norms over all heads, post-norms
        return T.Olmo2Config(**_COMMON)
    if family == "granite":  # embedding, attention, residual and logits multipliers
        return T.GraniteConfig(**_COMMON, embedding_multiplier=3.0, attention_multiplier=0.2,
                               residual_multiplier=0.5, logits_scaling=4.0)
    raise KeyError(family)


def byte_tokenizer():
    """A byte-level tokenizer: ids 0-255 are bytes, 256-259 are <s>, </s>, <pad>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_to_unicode, key=lambda c: _byte_of(c)))}
    for i, tok in enumerate(["<s>", "</s>", "<pad>", "<unk>"]):
        vocab[tok] = 256 + i
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def _byte_of(ch: str) -> int:
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[ch]


def tiny_model(family: str, seed: int = 0):
    """The seeded tiny model of ``family`` (fp32, eval mode) and its byte tokenizer."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), byte_tokenizer()

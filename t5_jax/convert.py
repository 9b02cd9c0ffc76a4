"""Rule table between transformers' T5ForConditionalGeneration state dict and t5_jax's parameters.

Checkpoints differ in which copies of the tied embedding they carry: transformers' safetensors hold
only `shared.weight`, older pytorch_model.bin files also `encoder.embed_tokens.weight`,
`decoder.embed_tokens.weight` and (tied models) `lm_head.weight`. All of them are accepted as
aliases of `shared.weight`; export writes what transformers writes. An untied head (tie_word_embeddings False,
which from_pretrained also sets for a checkpoint whose lm_head.weight differs from shared.weight, as transformers
5 does) is a weight of its own.
"""
from jaxport.convert import Alias, Entry, Ignore, Rule, linear_kernel

_QKV = (("q", "query"), ("k", "key"), ("v", "value"))


def _attention(pytorch: str, flax: str) -> list[Rule]:
    rules = [Rule(f"{pytorch}.{short}.weight", f"{flax}/{name}/kernel", linear_kernel(input_axes=1))
             for short, name in _QKV]
    # The output projection's kernel is (heads, d_kv, d_model): two input axes.
    rules.append(Rule(f"{pytorch}.o.weight", f"{flax}/out/kernel", linear_kernel(input_axes=2)))
    return rules


def _relative_bias(pytorch: str, flax: str) -> Rule:
    # Only the first layer of each stack owns the bias; the others reuse it.
    return Rule(f"{pytorch}.relative_attention_bias.weight", f"{flax}/relative_attention_bias/embedding")


def _mlp(pytorch: str, flax: str, gated: bool) -> list[Rule]:
    inputs = ("wi_0", "wi_1") if gated else ("wi",)
    return [Rule(f"{pytorch}.{name}.weight", f"{flax}/{name}/kernel", linear_kernel(input_axes=1))
            for name in (*inputs, "wo")]


def _norm(pytorch: str, flax: str) -> Rule:
    return Rule(f"{pytorch}.weight", f"{flax}/scale")


def t5_rules(config) -> list[Entry]:
    gated = config.feed_forward_proj.startswith("gated-")
    encoder, decoder = "encoder.block.{i}.layer", "decoder.block.{i}.layer"
    encoder_layer, decoder_layer = "encoder/layers/{i}", "decoder/layers/{i}"
    rules: list[Entry] = [
        Rule("shared.weight", "shared/embedding"),
        Alias("encoder.embed_tokens.weight", "shared.weight"),
        Alias("decoder.embed_tokens.weight", "shared.weight"),

        *_attention(f"{encoder}.0.SelfAttention", f"{encoder_layer}/attention"),
        _relative_bias("encoder.block.0.layer.0.SelfAttention", "encoder/layers/0/attention"),
        _norm(f"{encoder}.0.layer_norm", f"{encoder_layer}/attention_norm"),
        *_mlp(f"{encoder}.1.DenseReluDense", f"{encoder_layer}/mlp", gated),
        _norm(f"{encoder}.1.layer_norm", f"{encoder_layer}/mlp_norm"),
        _norm("encoder.final_layer_norm", "encoder/final_norm"),

        *_attention(f"{decoder}.0.SelfAttention", f"{decoder_layer}/self_attention"),
        _relative_bias("decoder.block.0.layer.0.SelfAttention", "decoder/layers/0/self_attention"),
        _norm(f"{decoder}.0.layer_norm", f"{decoder_layer}/self_attention_norm"),
        *_attention(f"{decoder}.1.EncDecAttention", f"{decoder_layer}/cross_attention"),
        _norm(f"{decoder}.1.layer_norm", f"{decoder_layer}/cross_attention_norm"),
        *_mlp(f"{decoder}.2.DenseReluDense", f"{decoder_layer}/mlp", gated),
        _norm(f"{decoder}.2.layer_norm", f"{decoder_layer}/mlp_norm"),
        _norm("decoder.final_layer_norm", "decoder/final_norm"),
        # Early transformers versions saved an unused cross-attention bias; transformers skips it too.
        Ignore("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"),
    ]
    if config.tie_word_embeddings:
        rules.append(Alias("lm_head.weight", "shared.weight"))
    else:
        rules.append(Rule("lm_head.weight", "lm_head/kernel", linear_kernel(input_axes=1)))
    return rules

"""Rule tables between transformers' Perceiver text models' state dicts and perceiver_jax's parameters.

transformers' Perceiver has no tied duplicates in its state dict: the masked-language head reads the input byte
embedding directly, so each tensor has one key.
"""
from jaxport.convert import FLATTENED, IDENTITY, Entry, Rule, linear_kernel


def _linear(pytorch: str, flax: str, input_axes: int = 1, split_bias: bool = False) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/kernel", linear_kernel(input_axes)),
            Rule(f"{pytorch}.bias", f"{flax}/bias", FLATTENED if split_bias else IDENTITY)]


def _norm(pytorch: str, flax: str) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/scale"), Rule(f"{pytorch}.bias", f"{flax}/bias")]


def _layer(pytorch: str, flax: str, cross_attention: bool) -> list[Rule]:
    """A PerceiverLayer: attention (query/key/value kernels (in, heads, head_dim)), its output, the MLP."""
    attention = f"{pytorch}.attention.self"
    rules = _norm(f"{attention}.layernorm1", f"{flax}/attention_norm")
    if cross_attention:
        rules += _norm(f"{attention}.layernorm2", f"{flax}/inputs_norm")
    for name in ("query", "key", "value"):
        rules += _linear(f"{attention}.{name}", f"{flax}/{name}", split_bias=True)
    return [*rules,
            *_linear(f"{pytorch}.attention.output.dense", f"{flax}/out", input_axes=2),
            *_norm(f"{pytorch}.layernorm", f"{flax}/mlp_norm"),
            *_linear(f"{pytorch}.mlp.dense1", f"{flax}/dense1"),
            *_linear(f"{pytorch}.mlp.dense2", f"{flax}/dense2")]


def _perceiver(decoder: str) -> list[Entry]:
    """The preprocessor, latents and encoder, and the decoder, whose PyTorch prefix differs by head."""
    return [
        Rule("perceiver.input_preprocessor.embeddings.weight", "perceiver/input_preprocessor/embeddings/embedding"),
        Rule("perceiver.input_preprocessor.position_embeddings.weight",
             "perceiver/input_preprocessor/position_embeddings/embedding"),
        Rule("perceiver.embeddings.latents", "perceiver/latents"),
        *_layer("perceiver.encoder.cross_attention", "perceiver/encoder/cross_attention", cross_attention=True),
        *_layer("perceiver.encoder.self_attends.{i}", "perceiver/encoder/self_attends/{i}", cross_attention=False),
        Rule(f"{decoder}.output_position_encodings.position_embeddings", "perceiver/decoder/output_position_encodings"),
        *_layer(f"{decoder}.decoding_cross_attention", "perceiver/decoder/decoding_cross_attention",
                cross_attention=True),
    ]


def masked_lm_rules(config) -> list[Entry]:
    return [*_perceiver("perceiver.decoder"), Rule("embedding_decoder.bias", "embedding_decoder_bias")]


def sequence_classification_rules(config) -> list[Entry]:
    # transformers wraps the classifier's basic decoder in a PerceiverClassificationDecoder: one more `decoder.`
    return [*_perceiver("perceiver.decoder.decoder"),
            *_linear("perceiver.decoder.decoder.final_layer", "perceiver/decoder/final_layer")]

"""Rule table between the PyTorch LSG-BART / BART state dicts and lsg_jax's parameters, and `bart_to_lsg`, which
turns a plain BART checkpoint into an LSG-BART one for longer inputs as lsg-converter does.

PyTorch keys are those of the original LSGBartForConditionalGeneration (prefix "model.") or LSGBartModel (no
prefix); both are accepted by either class. Tied copies of the embedding (encoder/decoder embed_tokens, a tied
lm_head) are aliases of `model.shared.weight`.
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np

from jaxport.convert import IDENTITY, Alias, Entry, Ignore, Rule, Transform, linear_kernel
from jaxport.hf import CONFIG_FILE, find_weights, iter_tensors, read_config, save_weights


def _reshape_bias() -> Transform:
    """A torch bias [heads * head_dim] <-> (heads, head_dim)."""
    return Transform(to_flax=lambda array, shape: array.reshape(shape), to_pytorch=lambda array: array.reshape(-1),
                     pytorch_shape=lambda shape: (math.prod(shape),))


def _linear(pytorch: str, flax: str, input_axes: int = 1, bias_split: bool = False) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/kernel", linear_kernel(input_axes)),
            Rule(f"{pytorch}.bias", f"{flax}/bias", _reshape_bias() if bias_split else IDENTITY)]


def _attention(pytorch: str, flax: str) -> list[Rule]:
    rules = []
    for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
        rules += _linear(f"{pytorch}.{short}_proj", f"{flax}/{name}", 1, bias_split=True)
    return rules + _linear(f"{pytorch}.out_proj", f"{flax}/out", input_axes=2)


def _norm(pytorch: str, flax: str) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/scale"), Rule(f"{pytorch}.bias", f"{flax}/bias")]


def _body(prefix: str, config) -> list[Entry]:
    enc, dec = f"{prefix}encoder.layers.{{i}}", f"{prefix}decoder.layers.{{i}}"
    rules: list[Entry] = [
        Rule(f"{prefix}shared.weight", "shared/embedding"),
        Rule(f"{prefix}encoder.embed_positions.weight", "encoder/embed_positions/embedding"),
        *_norm(f"{prefix}encoder.layernorm_embedding", "encoder/layernorm_embedding"),
        *_attention(f"{enc}.self_attn", "encoder/layers/{i}/self_attn"),
        *_norm(f"{enc}.self_attn_layer_norm", "encoder/layers/{i}/self_attn_layer_norm"),
        *_linear(f"{enc}.fc1", "encoder/layers/{i}/fc1"),
        *_linear(f"{enc}.fc2", "encoder/layers/{i}/fc2"),
        *_norm(f"{enc}.final_layer_norm", "encoder/layers/{i}/final_layer_norm"),
        Rule(f"{prefix}decoder.embed_positions.weight", "decoder/embed_positions/embedding"),
        *_norm(f"{prefix}decoder.layernorm_embedding", "decoder/layernorm_embedding"),
        *_attention(f"{dec}.self_attn", "decoder/layers/{i}/self_attn"),
        *_norm(f"{dec}.self_attn_layer_norm", "decoder/layers/{i}/self_attn_layer_norm"),
        *_attention(f"{dec}.encoder_attn", "decoder/layers/{i}/encoder_attn"),
        *_norm(f"{dec}.encoder_attn_layer_norm", "decoder/layers/{i}/encoder_attn_layer_norm"),
        *_linear(f"{dec}.fc1", "decoder/layers/{i}/fc1"),
        *_linear(f"{dec}.fc2", "decoder/layers/{i}/fc2"),
        *_norm(f"{dec}.final_layer_norm", "decoder/layers/{i}/final_layer_norm"),
        Alias(f"{prefix}encoder.embed_tokens.weight", f"{prefix}shared.weight"),
        Alias(f"{prefix}decoder.embed_tokens.weight", f"{prefix}shared.weight"),
        Ignore(f"{prefix}encoder.version"),
        Ignore(f"{prefix}decoder.version"),
    ]
    if config.lsg:
        rules.insert(1, Rule(f"{prefix}encoder.global_embeddings.weight", "encoder/global_embeddings/embedding"))
    return rules


def lsg_bart_rules(config, with_head: bool = True) -> list[Entry]:
    """with_head: LSGBartForConditionalGeneration (keys "model.*", final_logits_bias, lm_head); else LSGBartModel
    (keys without prefix). Each also reads the other's keys; export writes its own."""
    own, other = ("model.", "") if with_head else ("", "model.")
    rules = _body(own, config) + _body(other, config)
    if with_head:
        rules.append(Rule("final_logits_bias", "final_logits_bias"))
        if config.tie_word_embeddings:
            rules.append(Alias("lm_head.weight", "model.shared.weight"))
        else:
            rules.append(Rule("lm_head.weight", "lm_head/embedding"))
    else:
        rules += [Ignore("final_logits_bias"), Ignore("lm_head.weight")]
    return rules


# ------------------------------------------------------------------------------------------------------------
# BART -> LSG-BART, as lsg-converter's BartConversionScript (non-random global initialisation).

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "sentencepiece.bpe.model")


def _mask_token_id(folder: Path) -> int:
    try:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # no tokenizer files, or transformers missing
        raise ValueError(f"cannot read the tokenizer of {folder} to find the mask token ({error}); "
                         "pass mask_token_id=") from error
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer of {folder} has no mask token; pass mask_token_id=")
    return int(tokenizer.mask_token_id)


def order_positions(positions: np.ndarray, stride: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """512 rows of position embeddings for the global tokens: the original's ConversionScript.order_positions.
    Tables of fewer than 512 rows are completed with normal draws (per-dimension mean/std), as there."""
    n, d = positions.shape
    if n % 512:
        if n > 512:
            positions = positions[:512 * (n // 512)]
        else:
            rng = rng or np.random.default_rng(123)
            mean, std = positions.mean(0, keepdims=True), positions.std(0, ddof=1, keepdims=True)
            fill = rng.normal(np.broadcast_to(mean, (512 - n, d)), np.broadcast_to(std, (512 - n, d)))
            positions = np.concatenate([positions, fill.astype(positions.dtype)], axis=0)
        n = positions.shape[0]
    factor = n // 512
    positions = positions.reshape(-1, factor, d)[:, 0]
    return positions.reshape(-1, stride // factor, d).transpose(1, 0, 2).reshape(-1, d)


def _extend_positions(table: np.ndarray, max_length: int, offset: int = 2) -> np.ndarray:
    """The original's update_positions: keep the offset rows, repeat the learned rows up to max_length."""
    copies = max_length // table.shape[0] + 1
    return np.concatenate([table[:offset]] + [table[offset:]] * copies, axis=0)[:max_length + offset]


def bart_to_lsg(src, dst, *, max_length: int = 4096, block_size: int = 128, sparse_block_size: int = 128,
                sparsity_factor: int = 2, sparsity_type: str = "norm", num_global_tokens: int = 1,
                global_positional_stride: int = 64, bos_token_id: int | None = None,
                mask_token_id: int | None = None, seed: int = 123, **lsg_kwargs) -> Path:
    """Write an LSG-BART folder at `dst` from the plain BART folder `src` (PyTorch or Flax-named weights are not
    both handled: PyTorch key names, as transformers writes them), for inputs up to `max_length` tokens.

    As lsg-converter: encoder and decoder position tables are extended by repeating the learned rows; the 512
    global embeddings are the encoder positions reordered by `global_positional_stride`, plus the embedding of
    BOS for the first and of the mask token for the others. Tokenizer files are copied with model_max_length
    updated. Other LSG fields (adaptive, mask_first_token, pool_with_global, pass_global_tokens_to_decoder,
    lsh_num_pre_rounds) go through lsg_kwargs. Returns dst.
    """
    from lsg_jax.configuration import LSGBartConfig

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if any(key in config for key in ("block_size", "num_global_tokens")):
        raise ValueError(f"{src} is already an LSG model; load it with a larger max_position_embeddings instead")
    tensors = dict(iter_tensors(find_weights(src).files))
    prefix = "model." if "model.shared.weight" in tensors else ""
    if f"{prefix}shared.weight" not in tensors:
        raise ValueError(f"{src} does not look like a BART checkpoint: no shared.weight")
    if bos_token_id is None:
        bos_token_id = config.get("bos_token_id", 0)
    if mask_token_id is None:
        mask_token_id = _mask_token_id(src)

    shared = np.asarray(tensors[f"{prefix}shared.weight"])
    encoder_positions = np.asarray(tensors[f"{prefix}encoder.embed_positions.weight"])
    positions = order_positions(encoder_positions[2:].astype(np.float32), global_positional_stride,
                                np.random.default_rng(seed))
    positions[0] += shared[bos_token_id]
    positions[1:] += shared[mask_token_id][None]
    out = {key: np.asarray(value) for key, value in tensors.items()}
    out[f"{prefix}encoder.global_embeddings.weight"] = positions.astype(shared.dtype)
    for side in ("encoder", "decoder"):
        key = f"{prefix}{side}.embed_positions.weight"
        out[key] = _extend_positions(np.asarray(tensors[key]), max_length)

    lsg = dict(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=sparsity_factor,
               sparsity_type=sparsity_type, num_global_tokens=num_global_tokens, **lsg_kwargs)
    LSGBartConfig.from_dict({**config, **lsg, "max_position_embeddings": max_length})  # validates the settings
    defaults = dict(adaptive=True, lsh_num_pre_rounds=1, mask_first_token=False, pass_global_tokens_to_decoder=True,
                    pool_with_global=True)
    architectures = [name if name.startswith("LSG") else "LSG" + name
                     for name in config.get("architectures") or ["BartForConditionalGeneration"]]
    new_config = {**config, **defaults, **lsg, "max_position_embeddings": max_length, "architectures": architectures,
                  "base_model_prefix": "lsg"}
    dst.mkdir(parents=True, exist_ok=True)
    save_weights(dst, out, metadata={"format": "pt"})
    (dst / CONFIG_FILE).write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    tokenizer_config = dst / "tokenizer_config.json"
    if tokenizer_config.is_file():
        values = json.loads(tokenizer_config.read_text())
        values["model_max_length"] = max_length
        tokenizer_config.write_text(json.dumps(values, indent=2) + "\n")
    return dst

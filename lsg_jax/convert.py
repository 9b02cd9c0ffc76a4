"""Rule table between the PyTorch LSG-BART / BART state dicts and lsg_jax's parameters, and `bart_to_lsg`, which
turns a plain BART checkpoint into an LSG-BART one for longer inputs (or an LSG-BART one to another max length)
as lsg-converter does.

PyTorch keys are those of the original LSGBartForConditionalGeneration (prefix "model.") or LSGBartModel (no
prefix); both are accepted by either class. Tied copies of the embedding (encoder/decoder embed_tokens, a tied
lm_head) are aliases of `model.shared.weight`.
"""
import json
import shutil
from pathlib import Path

import numpy as np

from jaxport.convert import FLATTENED, IDENTITY, Alias, Entry, Ignore, Rule, linear_kernel
from jaxport.hf import CONFIG_FILE, find_weights, iter_tensors, read_config, save_weights
from lsg_jax.configuration import MAX_GLOBAL_TOKENS, POSITION_OFFSET, LSGBartConfig


def _linear(pytorch: str, flax: str, input_axes: int = 1, bias_split: bool = False) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/kernel", linear_kernel(input_axes)),
            Rule(f"{pytorch}.bias", f"{flax}/bias", FLATTENED if bias_split else IDENTITY)]


def _attention(pytorch: str, flax: str) -> list[Rule]:
    rules = []
    for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
        rules += _linear(f"{pytorch}.{short}_proj", f"{flax}/{name}", 1, bias_split=True)
    return rules + _linear(f"{pytorch}.out_proj", f"{flax}/out", input_axes=2)


def _norm(pytorch: str, flax: str) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/scale"), Rule(f"{pytorch}.bias", f"{flax}/bias")]


def _token_embeddings(prefix: str, config) -> list[Entry]:
    if config.separate_token_embeddings:
        return [Rule(f"{prefix}{side}.embed_tokens.weight", f"{side}/embed_tokens/embedding")
                for side in ("encoder", "decoder")]
    return [Alias(f"{prefix}{side}.embed_tokens.weight", f"{prefix}shared.weight") for side in ("encoder", "decoder")]


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
        *_token_embeddings(prefix, config),
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
# BART -> LSG-BART, as lsg-converter's BartConversionScript (and its LSG -> LSG modes: resize, keep the first token).

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "sentencepiece.bpe.model")
# The original LSGBartConfig's defaults: what a plain BART source gets for the LSG fields not given.
_LSG_DEFAULTS = dict(block_size=128, sparse_block_size=128, sparsity_factor=2, sparsity_type="norm",
                     num_global_tokens=1, adaptive=True, lsh_num_pre_rounds=1, mask_first_token=False,
                     pass_global_tokens_to_decoder=True, pool_with_global=True)


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
    rows = MAX_GLOBAL_TOKENS  # the global embedding table's, whatever num_global_tokens is
    if n % rows:
        if n > rows:
            positions = positions[:rows * (n // rows)]
        else:
            rng = rng or np.random.default_rng(123)
            mean, std = positions.mean(0, keepdims=True), positions.std(0, ddof=1, keepdims=True)
            fill = rng.normal(np.broadcast_to(mean, (rows - n, d)), np.broadcast_to(std, (rows - n, d)))
            positions = np.concatenate([positions, fill.astype(positions.dtype)], axis=0)
        n = positions.shape[0]
    factor = n // rows
    positions = positions.reshape(-1, factor, d)[:, 0]
    return positions.reshape(-1, stride // factor, d).transpose(1, 0, 2).reshape(-1, d)


def random_global_embeddings(shared: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """512 draws from the normal with the token embeddings' mean and covariance (the original's
    --random_global_init). Drawn as torch's MultivariateNormal does, mean + L @ eps with L the Cholesky factor of
    the covariance and eps standard normals, so the same eps give the same rows."""
    tokens = shared.astype(np.float64)
    eps = rng.standard_normal((MAX_GLOBAL_TOKENS, tokens.shape[1]))
    try:
        factor = np.linalg.cholesky(np.cov(tokens, rowvar=False))
    except np.linalg.LinAlgError as error:  # e.g. fewer tokens than dimensions
        raise ValueError(f"random_global_init: the covariance of the {tokens.shape[0]} token embeddings of size "
                         f"{tokens.shape[1]} is not positive definite, so it has no normal to draw from") from error
    return (tokens.mean(0) + eps @ factor.T).astype(np.float32)


def _extend_positions(table: np.ndarray, max_length: int, offset: int = POSITION_OFFSET) -> np.ndarray:
    """The original's update_positions: keep the offset rows, repeat the learned rows up to max_length (or cut
    them there). It repeats max_length // len(table) + 1 times, which falls short for small tables and long
    targets; ceil(max_length / learned rows) gives the same rows whenever that was enough."""
    copies = -(-max_length // (table.shape[0] - offset))
    return np.concatenate([table[:offset]] + [table[offset:]] * copies, axis=0)[:max_length + offset]


def _describe_lsg(config: dict) -> str:
    fields = [f"{key}={config[key]}" for key in ("block_size", "num_global_tokens", "sparsity_type") if key in config]
    return ", ".join(fields + ["encoder.global_embeddings in its weights"])


def _check_source(src: Path, config: dict, has_globals: bool, resize: bool, keep_first_global_token: bool,
                  random_global_init: bool) -> None:
    """Refuse the combinations of source and options that the original runs, with a warning or silently, into
    something other than what was asked."""
    config_lsg = (any(key in config for key in ("block_size", "num_global_tokens"))
                  or config.get("base_model_prefix") == "lsg"
                  or any(name.startswith("LSG") for name in config.get("architectures") or []))
    if config_lsg != has_globals:
        raise ValueError(f"{src}: config.json {'describes' if config_lsg else 'does not describe'} an LSG model "
                         f"but the weights {'lack' if config_lsg else 'have'} encoder.global_embeddings.weight")
    if resize and (random_global_init or keep_first_global_token):
        raise ValueError("resize keeps every global embedding: random_global_init and keep_first_global_token "
                         "do not apply to it")
    if has_globals and not (resize or keep_first_global_token):
        raise ValueError(f"{src} is already LSG-BART ({_describe_lsg(config)}): pass resize=True "
                         "(--resize) to change only its max length, or keep_first_global_token=True "
                         "(--keep-first-global-token) to rebuild its global embeddings but the first")
    if not has_globals and (resize or keep_first_global_token):
        option = "resize" if resize else "keep_first_global_token"
        raise ValueError(f"{option} applies to an LSG-BART folder and {src} is plain BART (no LSG fields in its "
                         "config.json, no encoder.global_embeddings): convert it without that option")


def bart_to_lsg(src, dst, *, max_length: int = 4096, block_size: int | None = None,
                sparse_block_size: int | None = None, sparsity_factor: int | None = None,
                sparsity_type: str | None = None, num_global_tokens: int | None = None,
                global_positional_stride: int = 64, bos_token_id: int | None = None,
                mask_token_id: int | None = None, random_global_init: bool = False,
                keep_first_global_token: bool = False, resize: bool = False, seed: int = 123, **lsg_kwargs) -> Path:
    """Write an LSG-BART folder at `dst` from the BART folder `src` (PyTorch key names, as transformers writes
    them), for inputs up to `max_length` tokens.

    As lsg-converter: encoder and decoder position tables are extended by repeating the learned rows (or cut);
    the 512 global embeddings are the encoder positions reordered by `global_positional_stride`, plus the
    embedding of BOS for the first and of the mask token for the others, or with `random_global_init`, plus
    draws from the normal fitted to the token embeddings (the first still BOS). Random draws come from
    np.random.default_rng(seed). Tokenizer files are copied with model_max_length updated.

    An LSG-BART `src` needs one of: `resize` (only the position tables change; the original's --resize_lsg), or
    `keep_first_global_token` (global embeddings rebuilt from its own positions, except the first, kept).
    LSG fields left at None keep the source's values, or the original's defaults for plain BART; others
    (adaptive, mask_first_token, pool_with_global, pass_global_tokens_to_decoder, lsh_num_pre_rounds) go through
    lsg_kwargs. Returns dst.
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():  # writing dst removes the weight files that are being read
        raise ValueError(f"dst is src ({src}): write the converted model to another folder")
    config = read_config(src)
    tensors = dict(iter_tensors(find_weights(src).files))
    prefix = "model." if "model.shared.weight" in tensors else ""
    if f"{prefix}shared.weight" not in tensors:
        raise ValueError(f"{src} does not look like a BART checkpoint: no shared.weight")
    global_key = f"{prefix}encoder.global_embeddings.weight"
    _check_source(src, config, global_key in tensors, resize, keep_first_global_token, random_global_init)
    out = {key: np.asarray(value) for key, value in tensors.items()}

    if not resize:
        shared = out[f"{prefix}shared.weight"]
        bos_token_id = config.get("bos_token_id", 0) if bos_token_id is None else bos_token_id
        rng = np.random.default_rng(seed)
        # Draw order as the original's: the token-embedding normal, then the fill of short position tables.
        drawn = random_global_embeddings(shared, rng) if random_global_init else None
        encoder_positions = out[f"{prefix}encoder.embed_positions.weight"][POSITION_OFFSET:]
        positions = order_positions(encoder_positions.astype(np.float32), global_positional_stride, rng)
        if random_global_init:
            drawn[0] = shared[bos_token_id]
            positions += drawn
        else:
            positions[0] += shared[bos_token_id]
            positions[1:] += shared[_mask_token_id(src) if mask_token_id is None else mask_token_id][None]
        if keep_first_global_token:
            positions[0] = out[global_key][0]
        out[global_key] = positions.astype(shared.dtype)
    for side in ("encoder", "decoder"):
        key = f"{prefix}{side}.embed_positions.weight"
        out[key] = _extend_positions(out[key], max_length)

    given = dict(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=sparsity_factor,
                 sparsity_type=sparsity_type, num_global_tokens=num_global_tokens, **lsg_kwargs)
    given = {key: value for key, value in given.items() if value is not None}
    architectures = [name if name.startswith("LSG") else "LSG" + name
                     for name in config.get("architectures") or ["BartForConditionalGeneration"]]
    new_config = {**_LSG_DEFAULTS, **config, **given, "max_position_embeddings": max_length,
                  "architectures": architectures, "base_model_prefix": "lsg"}
    LSGBartConfig.from_dict(new_config)  # validates the settings
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

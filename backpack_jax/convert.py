"""Rule tables between the PyTorch state dicts and backpack_jax's parameters, both ways.

GPT-2: transformers' keys (GPT2LMHeadModel "transformer.*" plus a tied "lm_head.weight"; GPT2Model without the
prefix; each class reads the other's keys, export writes its own, as transformers' save_pretrained writes them).
Backpack-GPT2: the authors' keys (BackpackGPT2LMHeadModel "backpack.*"; BackpackGPT2Model without the prefix). Its
state dict holds the word and position embeddings three and two times over (gpt2_model.wte / word_embeddings /
lm_head, gpt2_model.wpe / position_embeddings): the copies are aliases, read when present (and checked equal),
standing in when the canonical key is missing, and all written on export, so that the export has every key of the
original's state dict. Old transformers versions saved GPT-2's causal-mask buffers (attn.bias, attn.masked_bias):
ignored.

transformers' Conv1D keeps its weight input-first, [in, out]: a kernel is the same elements reshaped (c_attn's
[d, 3 d] is (d, 3, heads, head_dim), q / k / v in that order).
"""
from jaxport.convert import FLATTENED, IDENTITY, Alias, Entry, Ignore, Rule, input_first_kernel, linear_kernel


def _conv1d(pytorch: str, flax: str, input_axes: int = 1, split_bias: bool = False) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/kernel", input_first_kernel(input_axes)),
            Rule(f"{pytorch}.bias", f"{flax}/bias", FLATTENED if split_bias else IDENTITY)]


def _norm(pytorch: str, flax: str) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/scale"), Rule(f"{pytorch}.bias", f"{flax}/bias")]


def _mlp(pytorch: str, flax: str, split_output: bool = False) -> list[Rule]:
    return [*_conv1d(f"{pytorch}.c_fc", f"{flax}/c_fc"),
            *_conv1d(f"{pytorch}.c_proj", f"{flax}/c_proj", 1, split_bias=split_output)]


def gpt2_stack_rules(pytorch: str, flax: str) -> list[Entry]:
    """transformers' GPT2Model under the key prefix `pytorch` ("" or ending in ".") <-> the Flax GPT2Model under
    the path prefix `flax` ("" or ending in "/")."""
    layer, flax_layer = f"{pytorch}h.{{i}}", f"{flax}h/{{i}}"
    return [
        Rule(f"{pytorch}wte.weight", f"{flax}wte/embedding"),
        Rule(f"{pytorch}wpe.weight", f"{flax}wpe/embedding"),
        *_norm(f"{layer}.ln_1", f"{flax_layer}/ln_1"),
        *_conv1d(f"{layer}.attn.c_attn", f"{flax_layer}/attn/c_attn", split_bias=True),
        *_conv1d(f"{layer}.attn.c_proj", f"{flax_layer}/attn/c_proj", input_axes=2),
        *_norm(f"{layer}.ln_2", f"{flax_layer}/ln_2"),
        *_mlp(f"{layer}.mlp", f"{flax_layer}/mlp"),
        *_norm(f"{pytorch}ln_f", f"{flax}ln_f"),
        Ignore(f"{layer}.attn.bias"),
        Ignore(f"{layer}.attn.masked_bias"),
    ]


def gpt2_rules(config, with_head: bool = True) -> list[Entry]:
    """with_head: GPT2LMHeadModel (keys "transformer.*" and lm_head); else GPT2Model (no prefix). Each also reads
    the other's keys."""
    own, other = ("transformer.", "") if with_head else ("", "transformer.")
    flax = "transformer/" if with_head else ""
    rules = gpt2_stack_rules(own, flax) + gpt2_stack_rules(other, flax)
    if not with_head:
        return [*rules, Ignore("lm_head.weight")]
    if config.tie_word_embeddings:
        return [*rules, Alias("lm_head.weight", "transformer.wte.weight")]
    return [*rules, Rule("lm_head.weight", "lm_head/kernel", linear_kernel(input_axes=1))]


def _backpack_body(pytorch: str, flax: str, export: bool) -> list[Entry]:
    senses = f"{pytorch}sense_network"
    return [
        *gpt2_stack_rules(f"{pytorch}gpt2_model.", f"{flax}gpt2_model/"),
        *_norm(f"{senses}.ln", f"{flax}sense_network/ln"),
        *_norm(f"{senses}.block.ln_1", f"{flax}sense_network/block/ln_1"),
        *_norm(f"{senses}.block.ln_2", f"{flax}sense_network/block/ln_2"),
        *_mlp(f"{senses}.block.mlp", f"{flax}sense_network/block/mlp"),
        *_mlp(f"{senses}.final_mlp", f"{flax}sense_network/final_mlp", split_output=True),
        # A torch Linear [2 * num_senses * head, d] <-> (d, 2, num_senses, head): query and key of every sense.
        Rule(f"{pytorch}sense_weight_net.c_attn.weight", f"{flax}sense_weight_net/c_attn/kernel", linear_kernel(1)),
        Rule(f"{pytorch}sense_weight_net.c_attn.bias", f"{flax}sense_weight_net/c_attn/bias", FLATTENED),
        Alias(f"{pytorch}word_embeddings.weight", f"{pytorch}gpt2_model.wte.weight", export=export),
        Alias(f"{pytorch}position_embeddings.weight", f"{pytorch}gpt2_model.wpe.weight", export=export),
    ]


def backpack_rules(config, with_head: bool = True) -> list[Entry]:
    """with_head: BackpackGPT2LMHeadModel (keys "backpack.*" and lm_head, always tied to the word embeddings, as
    the original's tie_weights does); else BackpackGPT2Model (no prefix). Each also reads the other's keys."""
    own, other = ("backpack.", "") if with_head else ("", "backpack.")
    flax = "backpack/" if with_head else ""
    rules = _backpack_body(own, flax, export=True) + _backpack_body(other, flax, export=False)
    if with_head:
        return [*rules, Alias("lm_head.weight", "backpack.gpt2_model.wte.weight", export=True)]
    return [*rules, Ignore("lm_head.weight")]

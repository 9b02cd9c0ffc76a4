"""SIP's two models against a PyTorch reference on random tiny weights.

The reference is transformers' PyTorch T5 fed `inputs_embeds` = (FST encoding or prefix) ++ embedded input and an
attention mask with ones in front, which is how the original (namednil/sip: sip/fst_pretrain.py:192-239,
sip/embed_finetune.py:238-270) runs it; its FST encoder is written here in torch from the original's description
(state, symbol and final-flag embeddings concatenated, then a linear layer or Linear-GELU-Dropout-Linear). Its
state dict has the original's key names, and folders are written in the original's Hub layout (flat T5 config
plus the SIP fields, model_type sip_pretrain / sip_finetune).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig  # noqa: E402
from sip_jax.convert import pad_fst_reps  # noqa: E402
from sip_jax.modeling import (FSTInputError, SIPFinetuningModel, SIPPreTrainingModel,  # noqa: E402
                              check_fst_rep_values)

VOCAB = 64
T5_KWARGS = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
FST_KWARGS = {
    "linear": dict(num_states=7, fst_tokenizer_vocab_size=30, state_embedding_dim=6, token_embedding_dim=10,
                   final_state_embedding_dim=4, num_final_state_info=3, mlp_hidden_dim=None),
    "mlp": dict(num_states=7, fst_tokenizer_vocab_size=30, state_embedding_dim=6, token_embedding_dim=10,
                final_state_embedding_dim=0, num_final_state_info=3, mlp_hidden_dim=24),
}
PREFIX_KWARGS = dict(num_examples=3, prefix_length=5, random_selection=False, prefix_max_init_length=7,
                     num_precomputed_examples=6)


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch reference


def torch_t5(feed_forward_proj="gated-gelu", tied=False):
    kwargs = dict(T5_KWARGS, feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs))
    if not tied:  # transformers 5 ties the head whatever the config says: give it its own weights
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, T5_KWARGS["d_model"]))
    return model


class TorchFSTEncoder(torch.nn.Module):
    """The FST encoder, in torch, with the original's attribute (hence state-dict key) names."""

    def __init__(self, fst, d_model):
        super().__init__()
        self.state_embeddings = torch.nn.Embedding(fst["num_states"], fst["state_embedding_dim"])
        self.token_embeddings = torch.nn.Embedding(fst["fst_tokenizer_vocab_size"], fst["token_embedding_dim"])
        self.final_state_embedding = torch.nn.Embedding(fst["num_final_state_info"], fst["final_state_embedding_dim"])
        features = 2 * fst["state_embedding_dim"] + 2 * fst["token_embedding_dim"] + fst["final_state_embedding_dim"]
        self.use_mlp = fst["mlp_hidden_dim"] is not None
        if self.use_mlp:
            self.down_project = torch.nn.Linear(features, fst["mlp_hidden_dim"])
            self.dropout = torch.nn.Dropout(0.1)
            self.output_layer = torch.nn.Linear(fst["mlp_hidden_dim"], d_model)
        else:
            self.input_layer = torch.nn.Linear(features, d_model)

    def encode_fst(self, rep):
        parts = [self.state_embeddings(rep[:, :, 0]), self.state_embeddings(rep[:, :, 3]),
                 self.token_embeddings(rep[:, :, 1:3]).flatten(2)]
        if rep.shape[-1] == 5:
            parts.append(self.final_state_embedding(rep[:, :, 4]))
        x = torch.cat(parts, dim=2)
        if self.use_mlp:
            return self.output_layer(self.dropout(torch.nn.functional.gelu(self.down_project(x))))
        return self.input_layer(x)


class TorchSIPPretraining(TorchFSTEncoder):
    def __init__(self, fst):
        super().__init__(fst, T5_KWARGS["d_model"])
        self.model = torch_t5()

    def prepend(self, input_ids, attention_mask, fst_rep):
        fst = self.encode_fst(fst_rep)
        embeds = torch.cat([fst, self.model.get_input_embeddings()(input_ids)], dim=1)
        ones = torch.ones(fst.shape[:2], dtype=attention_mask.dtype)
        return embeds, torch.cat([ones, attention_mask], dim=1)


class TorchSIPFinetuning(torch.nn.Module):
    def __init__(self, prefix):
        super().__init__()
        self.model = torch_t5()
        d = T5_KWARGS["d_model"]
        self.register_buffer("prefix_init_tensor", torch.randn(prefix["num_precomputed_examples"],
                                                               prefix["prefix_max_init_length"], d))
        self.prefix_embedding = torch.nn.Parameter(torch.randn(1, prefix["prefix_length"], d))

    def prepend(self, input_ids, attention_mask):
        embeds = self.model.get_input_embeddings()(input_ids)
        prefix = self.prefix_embedding.repeat_interleave(input_ids.shape[0], 0)
        ones = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype)
        return torch.cat([prefix, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


def original_prefix_init(init_tensor, num_examples, prefix_length, permutation=None):
    """The original's `_initialize_prefix` (sip/embed_finetune.py:215-223), in torch, on a given permutation."""
    if permutation is not None:
        init_tensor = init_tensor[torch.as_tensor(np.array(permutation)), :, :]
    return init_tensor[:num_examples, :prefix_length, :].mean(dim=0, keepdim=True)


def save_original_layout(reference, folder, model_type, sip_fields, drop_duplicates=False):
    """config.json and model.safetensors as the original's Hub classes write them (T5 fields flat)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**reference.model.config.to_dict(), **sip_fields, "model_type": model_type,
              "architectures": ["SIPFinetuningModel" if model_type == "sip_finetune" else "SIPPreTrainingModel"]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {key: value.detach().clone().contiguous() for key, value in reference.state_dict().items()}
    if drop_duplicates:  # what newer transformers write: the tied copies of model.shared.weight left out
        state = {k: v for k, v in state.items() if not k.endswith("embed_tokens.weight")}
    safetensors_torch.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def random_fsts(rng, fst, lengths, width=5):
    reps = []
    for length in lengths:
        rep = np.stack([rng.integers(0, fst["num_states"] - 1, length),
                        rng.integers(1, fst["fst_tokenizer_vocab_size"], length),
                        rng.integers(1, fst["fst_tokenizer_vocab_size"], length),
                        rng.integers(0, fst["num_states"] - 1, length),
                        rng.integers(1, 3, length)], axis=1)[:, :width]
        reps.append(rep)
    return pad_fst_reps(reps, fst["num_states"])


def padded_inputs(rng, batch=3, length=9, dec_length=6):
    ids = rng.integers(2, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask, rng.integers(2, VOCAB, (batch, dec_length))


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_same_greedy(torch_sequences, ours, pad_id=0):
    """transformers stops at the longest row; ours runs to max_length, padding what follows the end."""
    torch_sequences = torch_sequences.numpy()
    ours = np.asarray(ours)
    np.testing.assert_array_equal(ours[:, :torch_sequences.shape[1]], torch_sequences)
    assert np.all(ours[:, torch_sequences.shape[1]:] == pad_id)


@pytest.fixture(params=["linear", "mlp"])
def pretraining_pair(request, tmp_path):
    torch.manual_seed(0)
    fst = FST_KWARGS[request.param]
    reference = TorchSIPPretraining(fst).eval()
    folder = save_original_layout(reference, tmp_path / "pt", "sip_pretrain", fst)
    return reference, SIPPreTrainingModel.from_pretrained(folder), fst


# ---------------------------------------------------------------------------------------------------------------
# Pre-training model


def test_pretraining_logits_and_greedy_generation_match_pytorch(pretraining_pair):
    reference, model, fst = pretraining_pair
    rng = np.random.default_rng(0)
    ids, mask, dec = padded_inputs(rng)
    fst_rep = random_fsts(rng, fst, [5, 2, 4])  # padded to 5 transitions with the padding state
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask), torch.tensor(fst_rep).long())
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
        generated = reference.model.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=7,
                                             do_sample=False, num_beams=1)
    out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), fst_rep=jnp.asarray(fst_rep))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4
    ours = model.generate(jnp.asarray(ids), jnp.asarray(mask), fst_rep=jnp.asarray(fst_rep), max_new_tokens=7)
    assert_same_greedy(generated, ours.sequences)


def test_pretraining_input_padding_does_not_leak(pretraining_pair):
    _, model, fst = pretraining_pair
    rng = np.random.default_rng(1)
    ids, mask, dec = padded_inputs(rng)
    fst_rep = random_fsts(rng, fst, [3, 3, 3])
    full = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), fst_rep=jnp.asarray(fst_rep)).logits
    alone = model(jnp.asarray(ids[2:, :3]), None, jnp.asarray(dec[2:]), fst_rep=jnp.asarray(fst_rep[2:])).logits
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(full[2]), rtol=1e-5, atol=1e-4)


def test_pretraining_four_wide_transitions_and_encoder_output(tmp_path):
    """Without a flag column the final-state embedding is skipped (the model must have none)."""
    torch.manual_seed(1)
    fst = FST_KWARGS["mlp"]  # final_state_embedding_dim = 0
    reference = TorchSIPPretraining(fst).eval()
    model = SIPPreTrainingModel.from_pretrained(save_original_layout(reference, tmp_path, "sip_pretrain", fst))
    fst_rep = random_fsts(np.random.default_rng(2), fst, [4, 1], width=4)
    with torch.no_grad():
        expected = reference.encode_fst(torch.tensor(fst_rep).long()).numpy()
    assert rel_err(np.asarray(model.encode_fst(jnp.asarray(fst_rep))), expected) < 1e-5


@pytest.fixture(scope="module")
def random_pretraining_model():
    return SIPPreTrainingModel(SIPPreTrainingConfig.create(**T5_KWARGS, **FST_KWARGS["linear"]), rngs=jax_rngs())


@pytest.mark.parametrize("width", [3, 6])
def test_transitions_of_the_wrong_width_are_refused(width, random_pretraining_model):
    model = random_pretraining_model
    fst_rep = jnp.zeros((1, 4, width), jnp.int32)
    with pytest.raises(FSTInputError, match=f"4 or 5 entries.*got {width}"):
        model(jnp.ones((1, 3), jnp.int32), decoder_input_ids=jnp.zeros((1, 2), jnp.int32), fst_rep=fst_rep)
    with pytest.raises(FSTInputError, match=f"got {width}"):
        model.generate(jnp.ones((1, 3), jnp.int32), fst_rep=fst_rep, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"FST 1: transition array of shape \(2, %d\)" % width):
        pad_fst_reps([np.zeros((3, 5)), np.zeros((2, width))], num_states=7)


def test_four_wide_transitions_need_a_model_without_flag_embeddings(random_pretraining_model):
    model = random_pretraining_model  # final_state_embedding_dim = 4
    with pytest.raises(FSTInputError, match="need 5 entries, got 4"):
        model.encode_fst(jnp.zeros((1, 3, 4), jnp.int32))


def test_out_of_range_ids_are_named():
    config = SIPPreTrainingConfig.create(**T5_KWARGS, **FST_KWARGS["linear"])
    rep = np.zeros((2, 3, 5), np.int32)
    rep[..., 4] = 1
    check_fst_rep_values(rep, config)
    rep[1, 2, 1] = 30
    with pytest.raises(FSTInputError, match=r"input symbol id 30 at \(example, transition\) \(1, 2\)"):
        check_fst_rep_values(rep, config)


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning model


def jax_rngs():
    from flax import nnx
    return nnx.Rngs(0)


@pytest.fixture
def finetuning_pair(tmp_path):
    torch.manual_seed(2)
    reference = TorchSIPFinetuning(PREFIX_KWARGS).eval()
    folder = save_original_layout(reference, tmp_path / "ft", "sip_finetune", PREFIX_KWARGS)
    return reference, folder


def test_finetuning_logits_and_greedy_generation_match_pytorch(finetuning_pair):
    reference, folder = finetuning_pair
    model = SIPFinetuningModel.from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), reference.prefix_embedding.detach().numpy())
    rng = np.random.default_rng(3)
    ids, mask, dec = padded_inputs(rng)
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask))
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
        generated = reference.model.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=7,
                                             do_sample=False, num_beams=1)
    out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4
    assert_same_greedy(generated, model.generate(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=7).sequences)


def test_a_tied_unscaled_t5_as_transformers_5_builds_from_a_v1_1_config(tmp_path):
    """SIP's configs read the T5 fields as T5Config does: tie_word_embeddings=True with scale_decoder_outputs=False
    and no head apart in the checkpoint is a tied, unscaled head."""
    torch.manual_seed(2)
    reference = TorchSIPFinetuning(PREFIX_KWARGS).eval()
    reference.model.lm_head.weight = reference.model.shared.weight
    folder = save_original_layout(reference, tmp_path, "sip_finetune", PREFIX_KWARGS)
    config = json.loads((folder / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["scale_decoder_outputs"]) == (True, False)
    model = SIPFinetuningModel.from_pretrained(folder)
    assert model.config.tie_word_embeddings and not model.config.scale_decoder_outputs
    ids, mask, dec = padded_inputs(np.random.default_rng(3))
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask))
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
    assert rel_err(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)).logits), expected) < 1e-4


def test_incremental_decoding_with_the_input_mask_equals_full_pass(finetuning_pair):
    """decode() accepts the input's own mask (what seq2seq_generate passes) and extends it over the prefix."""
    _, folder = finetuning_pair
    model = SIPFinetuningModel.from_pretrained(folder)
    ids, mask, dec = padded_inputs(np.random.default_rng(4))
    full = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)).logits
    hidden = model.encode(jnp.asarray(ids), jnp.asarray(mask))
    assert hidden.shape[1] == PREFIX_KWARGS["prefix_length"] + ids.shape[1]
    cache = model.init_cache(hidden, dec.shape[1])
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = model.decode(jnp.asarray(dec[:, t:t + 1]), hidden, jnp.asarray(mask), cache, t)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full), atol=1e-4, rtol=1e-4)


def _nan_prefix_folder(tmp_path, init_tensor, drop_prefix=False, prefix=PREFIX_KWARGS):
    torch.manual_seed(5)
    reference = TorchSIPFinetuning(prefix).eval()
    reference.prefix_init_tensor.copy_(torch.as_tensor(init_tensor))
    with torch.no_grad():
        reference.prefix_embedding.fill_(float("nan"))
    if drop_prefix:
        del reference.prefix_embedding
    return reference, save_original_layout(reference, tmp_path, "sip_finetune", prefix)


def known_init_tensor(prefix=PREFIX_KWARGS):
    """Exactly representable values whose means are exact too."""
    n, length, d = prefix["num_precomputed_examples"], prefix["prefix_max_init_length"], T5_KWARGS["d_model"]
    return (np.arange(n * length * d, dtype=np.float32).reshape(n, length, d) % 97) * 0.25


def test_nan_prefix_is_initialized_as_the_original(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path, init)
    model = SIPFinetuningModel.from_pretrained(folder)
    expected = original_prefix_init(torch.as_tensor(init), 3, 5).numpy()
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), expected)
    # First num_examples encodings, first prefix_length positions: the formula on a known tensor.
    np.testing.assert_array_equal(expected, init[:3, :5].mean(0, keepdims=True))


def test_random_selection_uses_the_given_key(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path, init)
    key = jax.random.key(7)
    model = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=key)
    permutation = jax.random.permutation(key, init.shape[0])
    expected = original_prefix_init(torch.as_tensor(init), 3, 5, permutation).numpy()
    np.testing.assert_allclose(np.asarray(model.prefix_embedding[...]), expected, rtol=1e-6)
    other = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=jax.random.key(8))
    assert not np.array_equal(np.asarray(other.prefix_embedding[...]), np.asarray(model.prefix_embedding[...]))
    again = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=key)
    np.testing.assert_array_equal(np.asarray(again.prefix_embedding[...]), np.asarray(model.prefix_embedding[...]))


def test_absent_or_resized_untrained_prefix_is_initialized(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path / "absent", init, drop_prefix=True)
    model = SIPFinetuningModel.from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), init[:3, :5].mean(0, keepdims=True))
    _, folder = _nan_prefix_folder(tmp_path / "nan", init)
    shorter = SIPFinetuningModel.from_pretrained(folder, prefix_length=2)  # the README's config override
    np.testing.assert_array_equal(np.asarray(shorter.prefix_embedding[...]), init[:3, :2].mean(0, keepdims=True))


def test_trained_prefix_of_another_length_is_an_error(finetuning_pair):
    from jaxport.convert import ConversionError
    _, folder = finetuning_pair
    with pytest.raises(ConversionError, match="prefix_embedding"):
        SIPFinetuningModel.from_pretrained(folder, prefix_length=2)


def test_prefix_longer_than_the_stored_encodings_is_an_error(tmp_path):
    _, folder = _nan_prefix_folder(tmp_path, known_init_tensor())
    with pytest.raises(ValueError, match="prefix_length=9 is longer than the stored encodings"):
        SIPFinetuningModel.from_pretrained(folder, prefix_length=9)


def test_random_selection_needs_a_key():
    config = SIPFinetuningConfig.create(**T5_KWARGS, **dict(PREFIX_KWARGS, random_selection=True))
    model = SIPFinetuningModel(config, rngs=jax_rngs())
    assert not model.prefix_is_initialized()  # NaN, as the original's constructor leaves it
    with pytest.raises(ValueError, match="explicit PRNG key"):
        model.initialize_prefix()

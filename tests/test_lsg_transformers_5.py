"""Plain BART folders written by the installed transformers (5.x) in lsg_jax: the version drift T5 had (issue 14)
checked for LSG-BART. transformers 5 ties BART's encoder and decoder embeddings and lm_head to model.shared only
when tie_word_embeddings is set; without it, it keeps four separate matrices (transformers 4 kept the encoder and
decoder embeddings tied to model.shared whatever the config said)."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lsg_jax import LSGBartForConditionalGeneration  # noqa: E402
from tests import helpers  # noqa: E402
from tests.lsg_reference.harness import VOCAB, tiny_config  # noqa: E402


def random_bart(folder, **overrides):
    """A transformers BART with every weight random (distinct copies where the model keeps them apart), saved."""
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**tiny_config(**overrides))).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.2 * torch.randn_like(param))
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
    model.save_pretrained(folder)
    return model


def logits_pair(model, folder):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (2, 20))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    dec = rng.integers(3, VOCAB, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = LSGBartForConditionalGeneration.from_pretrained(folder)
    actual = ours(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), decoder_input_ids=jnp.asarray(dec))
    return np.asarray(actual.logits), expected


def test_tied_bart_of_the_installed_transformers(tmp_path):
    model = random_bart(tmp_path)
    actual, expected = logits_pair(model, tmp_path)
    assert helpers.rel_err(actual, expected) < 1e-4


def test_untied_bart_of_the_installed_transformers(tmp_path):
    model = random_bart(tmp_path, tie_word_embeddings=False)
    actual, expected = logits_pair(model, tmp_path)
    assert helpers.rel_err(actual, expected) < 1e-4
    ours = LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert ours.config.separate_token_embeddings
    ours.save_pretrained(tmp_path / "export", pytorch=True)
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path / "export"), helpers.folder_tensors(tmp_path))
    reloaded = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "export")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_untied_bart_round_trips_through_flax_weights(tmp_path):
    model = random_bart(tmp_path / "pt", tie_word_embeddings=False)
    LSGBartForConditionalGeneration.from_pretrained(tmp_path / "pt").save_pretrained(tmp_path / "flax")
    actual, expected = logits_pair(model, tmp_path / "flax")
    assert helpers.rel_err(actual, expected) < 1e-4

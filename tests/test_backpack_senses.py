"""Reading and editing a Backpack's senses (backpack_jax.senses) on a tiny random model built here: sense tables
against the senses' projection computed through the model's custom-contextualization path, interventions against
their definition, the heat map as a valid PNG whose pixels follow the weights, and the command line."""
import random
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel
from backpack_jax import senses as S
from jaxport.data import load_tokenizer
from tests import helpers

NUM_SENSES = 3


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    rng = random.Random(0)
    texts = [helpers.lm_document(rng, 4) for _ in range(50)]
    return helpers.write_gpt2_style_tokenizer(tmp_path_factory.mktemp("tokenizer"), texts, vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    return load_tokenizer(str(tokenizer_folder))


@pytest.fixture(scope="module")
def model(tokenizer):
    config = BackpackGPT2Config.create(vocab_size=304, n_positions=32, n_embd=24, n_layer=2, n_head=2,
                                       num_senses=NUM_SENSES, sense_intermediate_scale=2, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return BackpackGPT2LMHeadModel(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def model_folder(model, tokenizer_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    load_tokenizer(str(tokenizer_folder)).tokenizer.save_pretrained(folder)
    return folder


def one_hot_contextualization(length: int, sense: int, source: int) -> np.ndarray:
    """Weights that make every position's output sense `sense` of position `source` alone."""
    weights = np.zeros((1, NUM_SENSES, length, length), np.float32)
    weights[0, sense, :, source] = 1.0
    return weights


def test_sense_tables_rank_the_vocabulary_by_each_senses_projection(model, tokenizer):
    ids = S.word_ids(tokenizer, "cat") + S.word_ids(tokenizer, "sea")
    tables = S.sense_tables(model, tokenizer, ids, k=4)
    assert [table.token_id for table in tables] == ids
    for position, table in enumerate(tables):
        assert len(table.top) == len(table.bottom) == NUM_SENSES
        for sense in range(NUM_SENSES):
            # The projection through the output layer, by another route: the model's logits when every position
            # takes exactly this sense of this word.
            weights = one_hot_contextualization(len(ids), sense, position)
            logits = np.asarray(model.run_with_custom_contextualization(jnp.asarray([ids]), weights).logits)[0, 0]
            logits = logits[:tokenizer.vocab_size]
            order = np.argsort(-logits, kind="stable")
            assert [tokenizer.decode([i]) for i in order[:4]] == [t for t, _ in table.top[sense]]
            assert [tokenizer.decode([i]) for i in order[::-1][:4]] == [t for t, _ in table.bottom[sense]]
            np.testing.assert_allclose([s for _, s in table.top[sense]], logits[order[:4]], rtol=1e-5, atol=1e-6)
    assert "sense  2  top:" in tables[0].format()


def test_scaling_a_sense_of_a_word_scales_its_column_of_weights(model, tokenizer):
    ids = np.asarray([S.word_ids(tokenizer, "the cat and the dog")])
    the = S.word_ids(tokenizer, "the")
    weights = S.contextualization(model, ids)
    assert weights.shape == (1, NUM_SENSES, ids.shape[1], ids.shape[1])
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)  # each position's weights over earlier words
    scaled = S.scaled_contextualization(weights, ids, the, sense=1, factor=0.0)
    at = np.isin(ids[0], the)
    assert at.sum() == 2
    np.testing.assert_array_equal(scaled[0, 1][:, at], 0.0)
    np.testing.assert_array_equal(scaled[0, 1][:, ~at], weights[0, 1][:, ~at])
    np.testing.assert_array_equal(np.delete(scaled, 1, axis=1), np.delete(weights, 1, axis=1))
    with pytest.raises(ValueError, match="sense 3 does not exist: the model has senses 0..2"):
        S.scaled_contextualization(weights, ids, the, sense=3, factor=0.0)


def test_interventions_change_the_next_token_distribution_as_defined(model, tokenizer):
    prompt = "the sailors raised the"
    unchanged = S.intervene(model, tokenizer, prompt, [S.Scaling("the", 0, 1.0)], top=5)
    assert unchanged["before"] == unchanged["after"]
    ids = np.asarray([tokenizer.encode_batch([prompt])[0]])
    before = S.next_token_probabilities(model, ids)[0]
    assert [t for t, _ in unchanged["before"]] == [tokenizer.decode([i]) for i in np.argsort(-before[:300])[:5]]

    changed = S.intervene(model, tokenizer, prompt, [S.Scaling("sailors", 2, 3.0), S.Scaling("the", 0, 0.0)], top=5)
    weights = S.scaled_contextualization(S.contextualization(model, ids), ids, S.word_ids(tokenizer, "sailors"), 2, 3.0)
    weights = S.scaled_contextualization(weights, ids, S.word_ids(tokenizer, "the"), 0, 0.0)
    after = S.next_token_probabilities(model, ids, weights)[0, :300]
    expected = [(tokenizer.decode([i]), float(after[i])) for i in np.argsort(-after, kind="stable")[:5]]
    assert [t for t, _ in changed["after"]] == [t for t, _ in expected] != [t for t, _ in changed["before"]]
    np.testing.assert_allclose([p for _, p in changed["after"]], [p for _, p in expected], rtol=1e-6)
    assert {token for token, _, _ in changed["changed"]} >= {t for t, _ in changed["after"]}

    # Every sense of every word turned off: the output is zero, every token equally likely.
    zero = np.zeros((1, NUM_SENSES, ids.shape[1], ids.shape[1]), np.float32)
    np.testing.assert_allclose(S.next_token_probabilities(model, ids, zero)[0], 1.0 / model.config.vocab_size,
                               rtol=1e-5)


def read_png(path) -> np.ndarray:
    """A PNG of S.write_png's kind (8-bit RGB, filter 0) as an array, every chunk's CRC checked."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    while offset < len(raw):
        (length,), kind = struct.unpack(">I", raw[offset:offset + 4]), raw[offset + 4:offset + 8]
        payload = raw[offset + 8:offset + 8 + length]
        assert struct.unpack(">I", raw[offset + 8 + length:offset + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks[kind] = payload
        offset += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_heat_map_draws_each_senses_weights(model, tokenizer, tmp_path):
    ids = np.asarray([S.word_ids(tokenizer, "she cooked rice with fresh garlic")])
    weights = S.contextualization(model, ids)[0]
    image = read_png(S.heatmap_png(weights, tmp_path / "map.png", cell=4, columns=2))
    length = ids.shape[1]
    size = 4 * length
    assert image.shape == (2 * (size + 4) + 4, 2 * (size + 4) + 4, 3)
    for sense in range(NUM_SENSES):
        top, left = 4 + (sense // 2) * (size + 4), 4 + (sense % 2) * (size + 4)
        red = image[top:top + size:4, left:left + size:4, 0].astype(float)  # one pixel per cell
        darkness = (255 - red) / 225
        np.testing.assert_allclose(darkness, weights[sense] / weights[sense].max(), atol=1 / 200)
        assert (red[np.triu_indices(length, 1)] == 255).all()  # no weight on later words


def test_command_prints_tables_heat_map_and_intervention(model_folder, tmp_path, capsys):
    result = S.main([str(model_folder), "the", "harbour", "--top-k", "3", "--sentence", "the dog ran",
                     "--heatmap", str(tmp_path / "weights.png"), "--prompt", "the ship left the",
                     "--scale", "ship:1:0", "--scale", "left:0:2.5"])
    printed = capsys.readouterr().out
    assert set(result["senses"]) == {"the", "harbour"} and "senses of ' the'" in printed
    tokenizer = load_tokenizer(str(model_folder))
    assert len(result["senses"]["harbour"]) == len(S.word_ids(tokenizer, "harbour")) > 1  # a table per token
    assert printed.count("  sense  2  top:") == len(S.word_ids(tokenizer, "harbour")) + 1
    assert (tmp_path / "weights.png").exists() and result["heatmap"]["tokens"][0] == "the"
    assert result["intervention"]["scalings"] == [{"word": "ship", "sense": 1, "factor": 0.0},
                                                  {"word": "left", "sense": 0, "factor": 2.5}]
    assert "next token after 'the ship left the'" in printed and " -> " in printed
    with pytest.raises(SystemExit):
        S.main([str(model_folder), "--scale", "ship:1:0"])

"""FLIPPED's loss and option scores against the authors' formulation (T0/T5.py `_step` with channel and ul_loss,
T0/evaluation.py `evaluate_instruct`), restated below in PyTorch on transformers' T5 with random tiny weights."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flipped_jax import FlippedModel, flipped_loss, score_options
from flipped_jax.losses import PADDED_CONSTANT
from flipped_jax.scoring import option_log_likelihoods
from jaxport.seq2seq import shift_right
from tests import helpers

T5_KWARGS = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flipped") / "t5"
    reference = helpers.random_torch_t5(seed=0, **T5_KWARGS)
    reference.save_pretrained(folder)
    return reference, FlippedModel.from_pretrained(folder)


def padded_rows(rng, lengths, width, low=2, vocab=T5_KWARGS["vocab_size"]):
    """Rows of random ids in [low, vocab) ending in </s> (1), right-padded with 0, and their masks."""
    ids = np.zeros((len(lengths), width), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length - 1] = rng.integers(low, vocab, length - 1)
        ids[row, length - 1] = 1
    return ids, (ids > 0).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# The authors' formulation, restated


def authors_loss(logits_pos, logits_neg, labels, mask, ul_weight=3.0):
    """T0/T5.py `_step` (channel, ul_loss): labels padded with -100, likelihood by cross_entropy's token mean,
    unlikelihood with -100 added to the log-likelihood of the padded positions, summed over all positions and
    divided by the real ones."""
    lm_labels = labels.clone()
    lm_labels[mask == 0] = -100
    batch = labels.shape[0]
    lm_loss = F.cross_entropy(logits_pos.reshape(-1, logits_pos.shape[-1]), lm_labels.reshape(-1))
    cand = -F.cross_entropy(logits_neg.flatten(0, 1), lm_labels.flatten(0, 1), reduction="none").view(batch, 2, -1)
    cand = cand + (lm_labels < 0).view(batch, 2, -1) * -100
    unlikely = -torch.log(1 - torch.exp(cand) + 1e-2).sum() / (cand != -100).sum()
    return lm_loss + ul_weight * unlikely


def authors_scores(model, input_ids, attention_mask, instruction_ids, instruction_mask):
    """T0/evaluation.py `evaluate_instruct`: per option, the instruction's log-probabilities under the target mask,
    summed (no length normalisation)."""
    scores = []
    for k in range(input_ids.shape[1]):
        labels = torch.as_tensor(instruction_ids[:, k]).clone()
        target_mask = torch.as_tensor(instruction_mask[:, k])
        labels[labels == 0] = -100
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(input_ids[:, k]), attention_mask=torch.as_tensor(
                attention_mask[:, k]), labels=labels, decoder_attention_mask=target_mask).logits
        log_probs = target_mask.unsqueeze(-1) * torch.log_softmax(logits, dim=-1)
        # Their loop reads log_probs[i][j][label]; at a padded position (label -100) the mask has made it 0.
        picked = torch.gather(log_probs, -1, labels.clamp(min=0).unsqueeze(-1))[..., 0]
        scores.append(picked.sum(-1))
    return torch.stack(scores, 1).numpy()


# ---------------------------------------------------------------------------------------------------------------
# Loss


def loss_batch(rng, peak=1.0):
    """Logits of the decoder after gold and wrong inputs for 4 examples of instructions of different lengths."""
    labels, mask = padded_rows(rng, (10, 3, 7, 1), 10)
    logits = rng.normal(size=(2, 4, 10, T5_KWARGS["vocab_size"])).astype(np.float32) * peak
    if peak > 1:  # the wrong input makes the instruction's tokens all but certain: p close to 1
        np.put_along_axis(logits[1], labels[..., None], 60.0, axis=-1)
    return logits[0], logits[1], labels, mask


@pytest.mark.parametrize("peak", [1.0, 8.0])
def test_loss_equals_the_authors_on_padded_batches(peak):
    pos, neg, labels, mask = loss_batch(np.random.default_rng(0), peak)
    ours = flipped_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(labels), jnp.asarray(mask))
    for dtype in (torch.float32, torch.float64):
        theirs = authors_loss(torch.tensor(pos, dtype=dtype), torch.tensor(neg, dtype=dtype), torch.tensor(labels),
                              torch.tensor(mask))
        assert abs(float(ours) - float(theirs)) / abs(float(theirs)) < 1e-5, (dtype, float(ours), float(theirs))


def test_loss_gradients_equal_the_authors():
    pos, neg, labels, mask = loss_batch(np.random.default_rng(1), 4.0)
    grads = jax.grad(lambda p, n: flipped_loss(p, n, jnp.asarray(labels), jnp.asarray(mask)), argnums=(0, 1))(
        jnp.asarray(pos), jnp.asarray(neg))
    pos_t, neg_t = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (pos, neg))
    authors_loss(pos_t, neg_t, torch.tensor(labels), torch.tensor(mask)).backward()
    for ours, theirs in zip(grads, (pos_t.grad, neg_t.grad), strict=True):
        assert helpers.rel_err(ours, theirs.numpy()) < 1e-5


def test_padded_positions_add_their_constant_only():
    """The kept constant: -log(1.01) per padded position over the real tokens, times the weight; no gradient."""
    pos, neg, labels, mask = loss_batch(np.random.default_rng(2))
    args = [jnp.asarray(x) for x in (pos, neg, labels)]
    with_weight = flipped_loss(*args, jnp.asarray(mask), ul_weight=3.0)
    without = flipped_loss(*args, jnp.asarray(mask), ul_weight=0.0)
    unlikelihood = (with_weight - without) / 3.0
    real = float(mask.sum())
    p = np.exp(np.take_along_axis(jax.nn.log_softmax(neg.astype(np.float64)), labels[..., None], -1)[..., 0])
    expected = (-np.log(1 - p + 0.01) * mask).sum() / real + PADDED_CONSTANT * (mask.size - real) / real
    assert float(unlikelihood) == pytest.approx(expected, rel=1e-5)


def test_loss_of_the_model_on_gold_and_wrong_inputs_equals_the_authors(models):
    """End to end on the tiny T5: inputs of (input, gold) and (input, wrong label) of different lengths."""
    reference, model = models
    rng = np.random.default_rng(3)
    gold, gold_mask = padded_rows(rng, (12, 5, 9), 12)
    wrong, wrong_mask = padded_rows(rng, (10, 7, 12), 12)
    labels, label_mask = padded_rows(rng, (6, 2, 4), 6)
    decoder = np.asarray(shift_right(labels, 0, 0))
    with torch.no_grad():
        logits = [reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            decoder_input_ids=torch.tensor(decoder), decoder_attention_mask=torch.tensor(label_mask)
                            ).logits for ids, mask in ((gold, gold_mask), (wrong, wrong_mask))]
    theirs = authors_loss(*logits, torch.tensor(labels), torch.tensor(label_mask))
    ours_logits = [model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder,
                         decoder_attention_mask=label_mask).logits
                   for ids, mask in ((gold, gold_mask), (wrong, wrong_mask))]
    ours = flipped_loss(*ours_logits, jnp.asarray(labels), jnp.asarray(label_mask))
    assert abs(float(ours) - float(theirs)) / float(theirs) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Option scores


def option_batch(rng, num_options=(2, 5, 3, 4), slots=5, per_option=False):
    """Examples with different numbers of options (the rest empty slots), inputs of different lengths."""
    batch = len(num_options)
    lengths = rng.integers(3, 15, (batch, slots))
    input_ids, attention_mask = padded_rows(rng, lengths.ravel(), 14)
    input_ids, attention_mask = input_ids.reshape(batch, slots, 14), attention_mask.reshape(batch, slots, 14)
    option_mask = (np.arange(slots) < np.asarray(num_options)[:, None]).astype(np.int32)
    input_ids[option_mask == 0], attention_mask[option_mask == 0] = 0, 0
    shape = (batch * slots,) if per_option else (batch,)
    instruction_ids, instruction_mask = padded_rows(rng, rng.integers(2, 9, shape), 8)
    if per_option:
        instruction_ids, instruction_mask = (x.reshape(batch, slots, 8) for x in (instruction_ids, instruction_mask))
    return input_ids, attention_mask, instruction_ids, instruction_mask, option_mask


@pytest.mark.parametrize("per_option", [False, True], ids=["shared_instruction", "per_option_instructions"])
def test_option_scores_equal_the_authors(models, per_option):
    reference, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, option_mask = option_batch(
        np.random.default_rng(4), per_option=per_option)
    scores, predictions = score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask,
                                        option_mask)
    expand = (lambda x: x) if per_option else (lambda x: np.repeat(x[:, None], input_ids.shape[1], 1))
    theirs = authors_scores(reference, input_ids, attention_mask, expand(instruction_ids), expand(instruction_mask))
    scores, real = np.asarray(scores), option_mask.astype(bool)
    assert np.all(np.isneginf(scores[~real]))
    assert helpers.rel_err(scores[real], theirs[real]) < 1e-4
    for row, count in enumerate(option_mask.sum(1)):
        assert int(predictions[row]) == int(np.argmax(theirs[row, :count]))  # over the example's own options


def test_scores_sum_over_tokens_without_length_normalisation(models):
    """An option's score is the sum of its instruction's token log-likelihoods: a one-token-longer instruction
    adds that token's log-likelihood."""
    _, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, _ = option_batch(
        np.random.default_rng(5), num_options=(2,), slots=2)
    full, _ = score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask)
    logits = model(input_ids=input_ids[0], attention_mask=attention_mask[0],
                   decoder_input_ids=np.repeat(shift_right(instruction_ids, 0, 0), 2, 0)).logits
    tokens = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.repeat(instruction_ids, 2, 0)[..., None],
                                -1)[..., 0]
    np.testing.assert_allclose(np.asarray(full)[0], (tokens * instruction_mask).sum(-1), rtol=1e-5)


def test_ties_go_to_the_first_option(models):
    _, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, _ = option_batch(
        np.random.default_rng(6), num_options=(3,), slots=3)
    input_ids[:, 2], attention_mask[:, 2] = input_ids[:, 0], attention_mask[:, 0]  # options 0 and 2 the same
    input_ids[:, 1], attention_mask[:, 1] = 0, 0
    scores, predictions = score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask,
                                        np.array([[1, 0, 1]]))
    assert float(scores[0, 0]) == float(scores[0, 2]) and int(predictions[0]) == 0


def test_all_options_masked_is_an_error(models):
    _, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, option_mask = option_batch(np.random.default_rng(7))
    option_mask[2] = 0
    with pytest.raises(ValueError, match=r"example\(s\) \[2\] of the batch have every option masked"):
        score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask)


def test_mismatched_shapes_are_errors(models):
    _, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, option_mask = option_batch(np.random.default_rng(8))
    with pytest.raises(ValueError, match="instruction_ids must be"):
        score_options(model, input_ids, attention_mask, instruction_ids[:2], instruction_mask[:2])
    with pytest.raises(ValueError, match="option_mask must be"):
        score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask[:, :2])


def _dot_precisions(jaxpr) -> set:
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.add(eqn.params["precision"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _dot_precisions(sub)
    return found


def test_option_scoring_of_a_float32_model_multiplies_in_float32(models):
    _, model = models
    input_ids, attention_mask, instruction_ids, instruction_mask, _ = option_batch(np.random.default_rng(9),
                                                                                   per_option=True)
    jaxpr = jax.make_jaxpr(lambda: option_log_likelihoods(model, input_ids, attention_mask, instruction_ids,
                                                          instruction_mask))().jaxpr
    assert _dot_precisions(jaxpr) == {(jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)}

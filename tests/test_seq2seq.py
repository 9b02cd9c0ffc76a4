"""The pieces every encoder-decoder family shares: the teacher-forcing shift, the end-of-sequence cut."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxport.seq2seq import IGNORE_INDEX, cut_at_eos, shift_right


def test_shift_right_puts_the_start_token_first_and_pads_ignored_labels():
    labels = np.array([[5, 6, 7, 1], [8, 1, IGNORE_INDEX, IGNORE_INDEX]], np.int32)
    expected = [[2, 5, 6, 7], [2, 8, 1, 0]]
    shifted = shift_right(jnp.asarray(labels), start_id=2, pad_id=0)
    assert isinstance(shifted, jax.Array) and shifted.dtype == jnp.int32
    np.testing.assert_array_equal(shifted, expected)
    # The same function shifts one example on the host (the data pipeline): numpy in, numpy out.
    row = shift_right(labels[1], start_id=2, pad_id=0)
    assert isinstance(row, np.ndarray) and row.dtype == np.int32
    np.testing.assert_array_equal(row, expected[1])


def test_cut_at_eos_keeps_the_first_eos_and_drops_what_follows():
    eos = 1
    assert cut_at_eos(np.array([5, 6, eos, 7, eos, 0]), eos) == [5, 6, eos]
    assert cut_at_eos([eos, 5], eos) == [eos]
    assert cut_at_eos(np.array([5, 6, 7]), eos) == [5, 6, 7]  # no eos: the length limit stopped generation
    assert cut_at_eos([5, eos, 7], None) == [5, eos, 7]  # a tokenizer without eos
    assert all(type(i) is int for i in cut_at_eos(np.array([5, eos], np.int32), eos))

"""Constants and sampling settings of SIP's FST pre-training data, with where each comes from.

Sources are files of github.com/namednil/sip at commit 4ba415f ("Updated configs; non-hub versions"):
`gen_pretrain.py` is `sip/data_gen/gen_pretrain.py`, `utils.py` is `sip/data_gen/utils.py`,
`data_loading.py` is `sip/data_loading.py`, `d4.jsonnet` is `configs/pretrain_non_hub/pretrain_SIP_d4.jsonnet`.
"""
import dataclasses

# ASCII control codes that stand for a whole family of arcs in a sampled FST (gen_pretrain.py:19-22).
SYMBOL_ID = 17        # every letter of the FST's alphabet to itself
SYMBOL_TO_UPPER = 18  # every letter that has an upper-case form to it
SYMBOL_TO_LOWER = 19  # every letter that has a lower-case form to it
# Epsilon (label 0 in OpenFst) is written as this character in the transition lists (utils.py:10-15).
SYMBOL_EPSILON = 20
SPECIAL_SYMBOLS = (SYMBOL_ID, SYMBOL_TO_UPPER, SYMBOL_TO_LOWER)
# The order matters for reproducing the original's random stream: it draws from this list (gen_pretrain.py:60).
SPECIAL_CHOICE_ORDER = (SYMBOL_ID, SYMBOL_TO_LOWER, SYMBOL_TO_UPPER)

# Final-state flag of a transition's target state (utils.py:22-24); 0 is left for padding.
FLAG_FINAL = 2
FLAG_NOT_FINAL = 1

# The symbol inventory FSTs draw their alphabets from (gen_pretrain.py:100-106): printable ASCII
# (32..126) and the IPA Extensions block (U+0250..U+02AF), sorted, without '[', ']' and backslash
# (OpenFst's string parser gives them a meaning). 188 characters.
VOCAB: str = "".join(sorted(set(chr(code) for code in [*range(32, 127), *range(592, 688)]) - {"[", "]", "\\"}))

# The largest seed the original draws for pynini.randgen (gen_pretrain.py:121, 207, 250).
MAX_RANDGEN_SEED = 100_000_000_000

# Model-side settings of the SIP-d4 pre-training config: 15 state embeddings, of which the last is
# the padding state (d4.jsonnet:1, data_loading.py:62-63, 86-87), and the FST tokenizer file (d4.jsonnet:3).
NUM_STATES = 15
FST_TOKENIZER_FILE = "unicode_char_tokenizer_ipa.json"


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How one random FST and its strings are drawn; defaults are the original's (gen_pretrain.py)."""

    min_states: int = 2            # random.randint(2, DESIRED_MAX_STATES)      gen_pretrain.py:130
    max_states: int = 4            # DESIRED_MAX_STATES = 4                     gen_pretrain.py:123
    min_vocab_size: int = 5        # random.randint(5, 25)                      gen_pretrain.py:131
    max_vocab_size: int = 25       #                                            gen_pretrain.py:131
    # number of final states: random.randint(1, num_states)                     gen_pretrain.py:132
    p_special: float = 0.15        # a state gets one ID/UPPER/LOWER arc only   gen_pretrain.py:137
    p_drop_letter: float = 0.4     # a letter gets no arc at a state            gen_pretrain.py:138
    id_prob: float = 0.2           # a kept arc copies its letter               gen_pretrain.py:138
    add_sink: bool = False         # my_gen_random_fst default                  gen_pretrain.py:45
    make_initial_final: bool = False  # my_gen_random_fst default               gen_pretrain.py:47
    require_cycle: bool = True     # only cyclic FSTs (infinite language)       gen_pretrain.py:148
    min_input_length: int = 1      # one_step(vocab).closure(1, 35)             gen_pretrain.py:172
    max_input_length: int = 35     #                                            gen_pretrain.py:172
    vocab: str = VOCAB             #                                            gen_pretrain.py:100-106

    def __post_init__(self):
        if not 1 <= self.min_states <= self.max_states:
            raise ValueError(f"need 1 <= min_states <= max_states, got {self.min_states}, {self.max_states}")
        if not 1 <= self.min_vocab_size <= self.max_vocab_size <= len(self.vocab):
            raise ValueError(f"need 1 <= min_vocab_size <= max_vocab_size <= len(vocab)={len(self.vocab)}, "
                             f"got {self.min_vocab_size}, {self.max_vocab_size}")
        if not 1 <= self.min_input_length <= self.max_input_length:
            raise ValueError(f"need 1 <= min_input_length <= max_input_length, "
                             f"got {self.min_input_length}, {self.max_input_length}")
        for name in ("p_special", "p_drop_letter", "id_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        bad = sorted({c for c in self.vocab if ord(c) in (0, *SPECIAL_SYMBOLS, SYMBOL_EPSILON) or c in "[]\\"})
        if bad:
            raise ValueError(f"vocab has reserved characters {bad!r}")

    @property
    def max_transitions(self) -> int:
        """The most transitions a sampled FST can have: every state reads every letter."""
        return (self.max_states + int(self.add_sink)) * self.max_vocab_size


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How many FSTs and strings the dataset has and how they are split (gen_pretrain.py:116-170)."""

    num_fsts: int = 50_000         # num_data_points: distinct FSTs collected   gen_pretrain.py:117
    attempts_per_fst: int = 2      # num_fsts = 2 * num_data_points candidates  gen_pretrain.py:119
    examples_per_fst: int = 5      # num_ex_per_task                            gen_pretrain.py:120
    train_fraction: float = 0.8    # int(0.8 * n) training FSTs                 gen_pretrain.py:167
    dev_fraction: float = 0.1      # min(1000, int(0.1 * n)) dev FSTs           gen_pretrain.py:169
    test_fraction: float = 0.1     # min(1000, int(0.1 * n)) test FSTs          gen_pretrain.py:170
    max_dev_fsts: int = 1000       #                                            gen_pretrain.py:169
    max_test_fsts: int = 1000      #                                            gen_pretrain.py:170
    max_easy_dev_fsts: int = 1000  # min(1000, num_train) training FSTs        gen_pretrain.py:168

    def __post_init__(self):
        if self.num_fsts < 1 or self.attempts_per_fst < 1 or self.examples_per_fst < 1:
            raise ValueError("num_fsts, attempts_per_fst and examples_per_fst must be positive")
        if min(self.train_fraction, self.dev_fraction, self.test_fraction) < 0 or \
                self.train_fraction + self.dev_fraction + self.test_fraction > 1 + 1e-9:
            raise ValueError("split fractions must be non-negative and sum to at most 1")

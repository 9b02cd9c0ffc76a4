"""Random deterministic FSTs and their strings, made with pynini as SIP's generator makes them.

Each function follows one step of sip/data_gen/gen_pretrain.py and sip/data_gen/utils.py in
namednil/sip (commit 4ba415f), drawing from a `random.Random` in the same order as the original
draws from the global `random` module, so a seeded run gives the original's FSTs.
"""
import dataclasses
import functools
import random

import pynini

from sip_jax.fst.settings import (
    FLAG_FINAL,
    FLAG_NOT_FINAL,
    MAX_RANDGEN_SEED,
    SPECIAL_CHOICE_ORDER,
    SPECIAL_SYMBOLS,
    SYMBOL_EPSILON,
    SYMBOL_ID,
    SYMBOL_TO_LOWER,
    SYMBOL_TO_UPPER,
    VOCAB,
    SamplerConfig,
)
from sip_jax.fst.transitions import Transition

_NOT_FINAL = pynini.Weight.zero("tropical")


def random_fst(rng: random.Random, num_states: int, num_final: int, alphabet: str, *, id_prob: float = 0.25,
               p_drop_letter: float = 0.0, p_special: float = 0.0, add_sink: bool = False,
               make_initial_final: bool = False) -> pynini.Fst:
    """One random deterministic FST, trimmed and minimised (gen_pretrain.py:45-98).

    Every state but the start begins final. A state becomes, with probability `p_special`, a state
    with one special arc (copy / lower / upper any letter) and nothing else; otherwise each letter
    gets an arc to a uniformly drawn state unless dropped (`p_drop_letter`), writing the letter itself
    with probability `id_prob` and else a uniform choice of epsilon or a letter. After trimming,
    all but `num_final` of the remaining states are made non-final (the start may be among them,
    so fewer may end up final). The FST is then minimised by OpenFst; the minimised machine is kept
    only if it reads no epsilon, its special arcs still write their own symbol, and it is not larger.
    """
    total = num_states + int(add_sink)
    fst = pynini.Fst()
    fst.add_states(total)
    fst.set_start(0)
    targets = list(range(total))
    for state in range(0 if make_initial_final else 1, num_states):
        fst.set_final(state, 0)
    output_labels = [0, *map(ord, alphabet)]
    for state in range(num_states):  # the sink state, if any, gets no arcs
        if rng.random() < p_special:
            symbol = rng.choice(SPECIAL_CHOICE_ORDER)
            fst.add_arc(state, pynini.Arc(symbol, symbol, 0, rng.choice(targets)))
            continue
        for letter in alphabet:
            target = rng.choice(targets)  # drawn before the drop decision, as in the original
            if rng.random() < p_drop_letter:
                continue
            output = ord(letter) if rng.random() < id_prob else rng.choice(output_labels)
            fst.add_arc(state, pynini.Arc(ord(letter), output, 0, target))
    fst.connect()
    remaining = list(fst.states())
    rng.shuffle(remaining)  # random_subset (utils.py:56-59): a shuffled prefix
    for state in remaining[:max(0, len(remaining) - num_final)]:
        fst.set_final(state, _NOT_FINAL)

    unminimised = fst.copy()
    # OpenFst minimises a transducer by pushing output labels towards the start and minimising the
    # (input, output-string) acceptor; outputs of several symbols come back as epsilon-input chains.
    fst.minimize(allow_nondet=False)
    usable = all(arc.ilabel != 0 and (arc.ilabel not in SPECIAL_SYMBOLS or arc.ilabel == arc.olabel)
                 for state in fst.states() for arc in fst.arcs(state))
    if not usable or fst.num_states() > unminimised.num_states():
        return unminimised
    return fst


def is_cyclic(fst: pynini.Fst) -> bool:
    return not bool(fst.properties(pynini.ACYCLIC, True))


def sample_candidate(rng: random.Random, config: SamplerConfig = SamplerConfig()) -> tuple[pynini.Fst, str]:
    """Draws sizes, an alphabet and an FST as one iteration of the original's loop (gen_pretrain.py:130-138).

    Returns the FST and its alphabet (a string in the drawn order). The FST may be empty or acyclic:
    `is_usable` says whether the original would keep it.
    """
    num_states = rng.randint(config.min_states, config.max_states)
    vocab_size = rng.randint(config.min_vocab_size, config.max_vocab_size)
    num_final = rng.randint(1, num_states)
    letters = list(config.vocab)
    rng.shuffle(letters)
    alphabet = "".join(letters[:vocab_size])
    fst = random_fst(rng, num_states, num_final, alphabet, id_prob=config.id_prob,
                     p_drop_letter=config.p_drop_letter, p_special=config.p_special, add_sink=config.add_sink,
                     make_initial_final=config.make_initial_final)
    return start_at_zero(fst), alphabet


def start_at_zero(fst: pynini.Fst) -> pynini.Fst:
    """`fst` itself if its start state is 0 (or it is empty), else a copy with the start and 0 swapped.

    OpenFst's minimisation occasionally numbers the start state 1 (about one candidate in 6000, e.g.
    two states joined by an UPPER and a LOWER arc). The original would then fail its `start() == 0`
    assertion when writing the FST (utils.py:18); swapping two state ids keeps everything else.
    """
    start = fst.start()
    if fst.num_states() == 0 or start == 0:
        return fst
    new_id = {old: old for old in fst.states()}
    new_id[start], new_id[0] = 0, start
    old_id = {new: old for old, new in new_id.items()}
    swapped = pynini.Fst()
    swapped.add_states(fst.num_states())
    swapped.set_start(0)
    for new in range(fst.num_states()):
        swapped.set_final(new, fst.final(old_id[new]))
        for arc in fst.arcs(old_id[new]):
            swapped.add_arc(new, pynini.Arc(arc.ilabel, arc.olabel, arc.weight, new_id[arc.nextstate]))
    return swapped


def is_usable(fst: pynini.Fst, config: SamplerConfig = SamplerConfig()) -> bool:
    """Non-empty and, by default, cyclic, so its language is infinite (gen_pretrain.py:148-150)."""
    return fst.num_states() > 0 and (is_cyclic(fst) or not config.require_cycle)


def expand_special_arcs(fst: pynini.Fst, alphabet: str, vocab: str = VOCAB) -> pynini.Fst:
    """A copy with each special arc replaced by the letter arcs it stands for (gen_pretrain.py:25-43).

    ID: every letter of `alphabet` to itself; UPPER / LOWER: every letter whose case change differs
    from it. The new arcs go to the special arc's target and come after the state's other arcs, in
    the order ID, UPPER, LOWER, as the original's successive replacements leave them.
    """
    mappings = {
        SYMBOL_ID: [(ord(a), ord(a)) for a in alphabet],
        SYMBOL_TO_UPPER: [(ord(a), ord(a.upper())) for a in alphabet if a != a.upper() and a in vocab],
        SYMBOL_TO_LOWER: [(ord(a), ord(a.lower())) for a in alphabet if a != a.lower() and a in vocab],
    }
    expanded = fst.copy()
    for state in expanded.states():
        arcs = list(expanded.arcs(state))
        if not any(arc.ilabel in SPECIAL_SYMBOLS for arc in arcs):
            continue
        expanded.delete_arcs(state)
        targets = {}
        for arc in arcs:
            if arc.ilabel in SPECIAL_SYMBOLS:
                targets[arc.ilabel] = arc.nextstate
            else:
                expanded.add_arc(state, arc)
        for symbol in (SYMBOL_ID, SYMBOL_TO_UPPER, SYMBOL_TO_LOWER):
            if symbol in targets:
                for ilabel, olabel in mappings[symbol]:
                    expanded.add_arc(state, pynini.Arc(ilabel, olabel, 0, targets[symbol]))
    return expanded


def fst_transitions(fst: pynini.Fst) -> list[Transition]:
    """The transition list the model reads (utils.py:11-25): states and arcs in pynini's order."""
    if fst.num_states() and fst.start() != 0:
        raise ValueError(f"the start state is {fst.start()}; the encoding needs it to be 0")

    def symbol(label: int) -> str:
        return chr(SYMBOL_EPSILON) if label == 0 else chr(label)

    finals = {state for state in fst.states() if fst.final(state) != _NOT_FINAL}
    return [(state, symbol(arc.ilabel), symbol(arc.olabel), arc.nextstate,
             FLAG_FINAL if arc.nextstate in finals else FLAG_NOT_FINAL)
            for state in fst.states() for arc in fst.arcs(state)]


def _one_step(alphabet: str) -> pynini.Fst:
    """An acceptor of the one-letter strings over `alphabet` (utils.py:61-69)."""
    fst = pynini.Fst()
    fst.add_states(2)
    fst.set_start(0)
    fst.set_final(1, 0)
    for letter in alphabet:
        fst.add_arc(0, pynini.Arc(ord(letter), ord(letter), 0, 1))
    return fst


@functools.lru_cache(maxsize=8)
def length_filter(vocab: str, min_length: int, max_length: int) -> pynini.Fst:
    """Strings over `vocab` of `min_length`..`max_length` letters (gen_pretrain.py:172).

    Built with pynini's bounded closure, whose epsilon arcs shape the random walk of `sample_pair`
    (at each position: stop, if final, or read one of the arcs that can still reach a final state).
    """
    return _one_step(vocab).closure(min_length, max_length)


def sampling_machine(fst: pynini.Fst, alphabet: str, config: SamplerConfig = SamplerConfig()) -> pynini.Fst:
    """The FST with special arcs expanded, restricted to inputs of allowed length (gen_pretrain.py:193-194).

    Empty (no states) when no allowed input is accepted, e.g. when the only way to a final state is
    a LOWER arc and no letter has a lower-case form; the original skips such FSTs (gen_pretrain.py:196-199).
    """
    restriction = length_filter(config.vocab, config.min_input_length, config.max_input_length)
    return pynini.compose(restriction, expand_special_arcs(fst, alphabet, config.vocab))


def sample_pair(machine: pynini.Fst, seed: int) -> tuple[str, str]:
    """One (input, output) of a uniform random walk through `machine` (utils.py:70-81, pynini.randgen)."""
    path = pynini.randgen(machine, seed=seed)
    output = path.string(token_type="utf8")
    return path.invert().string(token_type="utf8"), output


def unseen_input_machine(machine: pynini.Fst, alphabet: str, seen_inputs) -> pynini.Fst:
    """`machine` restricted to inputs over `alphabet` other than `seen_inputs` (gen_pretrain.py:241-247)."""
    # The original unions the inputs in set order (hash-seed dependent); the sampled strings do not depend
    # on that order (checked: same files under two PYTHONHASHSEEDs), and sorted order is plainly reproducible.
    excluded = pynini.union(*[pynini.accep(text, token_type="utf8") for text in sorted(set(seen_inputs))])
    allowed = pynini.difference(_one_step(alphabet).closure(), excluded)
    return pynini.compose(allowed, machine)


def draw_randgen_seed(rng: random.Random) -> int:
    return rng.randint(0, MAX_RANDGEN_SEED)


@dataclasses.dataclass(eq=False)
class FSTTask:
    """One sampled FST: what the model reads (`transitions`), its alphabet, and the pynini machines."""

    fst: pynini.Fst
    alphabet: str
    config: SamplerConfig = SamplerConfig()

    @functools.cached_property
    def transitions(self) -> list[Transition]:
        return fst_transitions(self.fst)

    @functools.cached_property
    def machine(self) -> pynini.Fst:
        return sampling_machine(self.fst, self.alphabet, self.config)

    @property
    def num_states(self) -> int:
        return self.fst.num_states()

    def has_strings(self) -> bool:
        return self.machine.num_states() > 0

    def sample(self, seed: int) -> tuple[str, str]:
        return sample_pair(self.machine, seed)

    def sample_unseen(self, seed: int, seen_inputs) -> tuple[str, str]:
        return sample_pair(unseen_input_machine(self.machine, self.alphabet, seen_inputs), seed)

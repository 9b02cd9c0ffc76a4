"""FSTs as SIP writes them for the model: lists of transitions, and plain-Python tools over them.

A transition is `(from_state, input_symbol, output_symbol, to_state, to_state_flag)`: states are ints
(the start state is 0), symbols are one-character strings, epsilon is `chr(20)`, the three special
symbols `chr(17)`, `chr(18)`, `chr(19)` stand for "copy / upper-case / lower-case any letter", and the
flag is 2 when `to_state` is final and 1 when not (sip/data_gen/utils.py:11-25 in namednil/sip).
The original loader also accepts 4-wide transitions without the flag (sip/data_loading.py:57).

Nothing here needs pynini: the simulator is deliberately independent of the library that made the
FSTs, so tests can check pynini's output against it.
"""
from collections.abc import Iterable, Sequence

from sip_jax.fst.settings import FLAG_FINAL, FLAG_NOT_FINAL, SYMBOL_EPSILON, SYMBOL_ID, SYMBOL_TO_LOWER, SYMBOL_TO_UPPER

Transition = tuple[int, str, str, int, int]

EPSILON = chr(SYMBOL_EPSILON)
ID = chr(SYMBOL_ID)
TO_UPPER = chr(SYMBOL_TO_UPPER)
TO_LOWER = chr(SYMBOL_TO_LOWER)
SPECIAL = (ID, TO_UPPER, TO_LOWER)


def describe_transition(index: int, transition) -> str:
    return f"transition {index} {tuple(transition)!r}" if isinstance(transition, (list, tuple)) \
        else f"transition {index} ({transition!r})"


def check_transitions(transitions: Iterable[Sequence], *, widths: Sequence[int] = (4, 5)) -> list[tuple]:
    """The transitions as tuples, after checking their form; a bad one is named in a ValueError.

    All must have the same width, one of `widths` (the original takes 4 or 5, the width of the first
    deciding for all); states are non-negative ints, symbols one character, the flag 1 or 2.
    """
    checked = []
    width = None
    for index, transition in enumerate(transitions):
        where = describe_transition(index, transition)
        if not isinstance(transition, (list, tuple)):
            raise ValueError(f"{where}: a transition is a list or tuple, not {type(transition).__name__}")
        if len(transition) not in widths:
            raise ValueError(f"{where}: has {len(transition)} entries; a transition has "
                             f"{' or '.join(map(str, widths))} (from, input, output, to[, is_final])")
        if width is None:
            width = len(transition)
        elif len(transition) != width:
            raise ValueError(f"{where}: has {len(transition)} entries but transition 0 has {width}; "
                             "all transitions of an FST have the same width")
        for position, name in ((0, "from_state"), (3, "to_state")):
            state = transition[position]
            if isinstance(state, bool) or not isinstance(state, int) or state < 0:
                raise ValueError(f"{where}: {name} must be a non-negative int, got {state!r}")
        for position, name in ((1, "input symbol"), (2, "output symbol")):
            symbol = transition[position]
            if not isinstance(symbol, str) or len(symbol) != 1:
                raise ValueError(f"{where}: the {name} must be a single character, got {symbol!r}")
        if width == 5 and transition[4] not in (FLAG_NOT_FINAL, FLAG_FINAL):
            raise ValueError(f"{where}: is_final must be {FLAG_NOT_FINAL} (not final) or {FLAG_FINAL} (final), "
                             f"got {transition[4]!r}")
        checked.append(tuple(transition))
    return checked


def final_states(transitions: Iterable[Sequence]) -> set[int]:
    """States that some transition marks final. The start state 0 only counts if an arc enters it."""
    flags: dict[int, int] = {}
    for index, transition in enumerate(check_transitions(transitions, widths=(5,))):
        target, flag = transition[3], transition[4]
        if flags.setdefault(target, flag) != flag:
            raise ValueError(f"{describe_transition(index, transition)}: state {target} is marked both "
                             "final and not final")
    return {state for state, flag in flags.items() if flag == FLAG_FINAL}


def _special_output(symbol: str, char: str, alphabet) -> str | None:
    """What a special arc writes for `char`, or None if it does not read `char`."""
    if alphabet is not None and char not in alphabet:
        return None
    if symbol == ID:
        return char
    mapped = char.upper() if symbol == TO_UPPER else char.lower()
    # The original builds these arcs with ord(mapped), so only one-character case changes exist
    # (sip/data_gen/gen_pretrain.py:33-35).
    return mapped if mapped != char and len(mapped) == 1 else None


def simulate(transitions: Iterable[Sequence], string: str, alphabet: str | None = None) -> str | None:
    """Run a deterministic FST on `string`: what it writes, or None if it does not accept `string`.

    `transitions` are 5-wide (the flag says which states are final). Special arcs read a letter of
    `alphabet` (the FST's own alphabet; any character when None) and write it unchanged, upper-cased,
    or lower-cased; a letter without a case change has no UPPER/LOWER arc, as in the original's
    expansion of these arcs. Epsilon outputs write nothing. Two arcs of one state that could read
    the same character are an error: the simulator is for deterministic FSTs only.
    """
    checked = check_transitions(transitions, widths=(5,))
    finals = final_states(checked)
    literal: dict[int, dict[str, tuple[str, int]]] = {}
    special: dict[int, list[tuple[str, str, int]]] = {}
    for index, (source, symbol_in, symbol_out, target, _) in enumerate(checked):
        if symbol_in == EPSILON:
            raise ValueError(f"{describe_transition(index, checked[index])}: reads epsilon; the simulator needs "
                             "an epsilon-free input side")
        if symbol_in in SPECIAL:
            special.setdefault(source, []).append((symbol_in, symbol_out, target))
            continue
        arcs = literal.setdefault(source, {})
        if symbol_in in arcs:
            raise ValueError(f"{describe_transition(index, checked[index])}: state {source} has two arcs reading "
                             f"{symbol_in!r}; the FST is not deterministic")
        arcs[symbol_in] = (symbol_out, target)
    state = 0
    written = []
    for char in string:
        options = []
        if char in literal.get(state, {}):
            symbol_out, target = literal[state][char]
            options.append((None if symbol_out == EPSILON else symbol_out, target))
        for symbol_in, symbol_out, target in special.get(state, ()):
            mapped = _special_output(symbol_in, char, alphabet)
            if mapped is not None:
                if symbol_out != symbol_in:
                    raise ValueError(f"state {state}: the special arc {symbol_in!r} writes {symbol_out!r}; "
                                     "special arcs write their own symbol")
                options.append((mapped, target))
        if not options:
            return None
        if len(options) > 1:
            raise ValueError(f"state {state} has {len(options)} arcs that read {char!r}; the FST is not "
                             "deterministic")
        output, state = options[0]
        if output is not None:
            written.append(output)
    return "".join(written) if state in finals else None


def num_states(transitions: Iterable[Sequence]) -> int:
    """1 + the largest state id in the transitions (at least 1: the start state)."""
    return 1 + max((max(t[0], t[3]) for t in transitions), default=0)


def canonical_form(transitions: Iterable[Sequence]) -> tuple:
    """A form equal for two deterministic FSTs exactly when they are isomorphic (same up to renaming states).

    States are renumbered in breadth-first order from the start state 0, each state's arcs taken in
    order of their input symbol (unique, by determinism); the result is the sorted tuple of the
    renumbered transitions. States not reachable from 0 keep their relative order after the others.
    """
    checked = check_transitions(transitions)
    by_state: dict[int, list[tuple]] = {}
    for index, transition in enumerate(checked):
        arcs = by_state.setdefault(transition[0], [])
        if any(other[1] == transition[1] for other in arcs):
            raise ValueError(f"{describe_transition(index, transition)}: state {transition[0]} has two arcs reading "
                             f"{transition[1]!r}; canonical forms are for deterministic FSTs")
        arcs.append(transition)
    order = {0: 0}
    queue = [0]
    for state in queue:
        for transition in sorted(by_state.get(state, ()), key=lambda t: t[1]):
            if transition[3] not in order:
                order[transition[3]] = len(order)
                queue.append(transition[3])
    for state in sorted({t[0] for t in checked} | {t[3] for t in checked}):
        order.setdefault(state, len(order))
    return tuple(sorted((order[t[0]], t[1], t[2], order[t[3]], *t[4:]) for t in checked))


def label(symbol: str) -> int:
    """The OpenFst label of a transition symbol (epsilon is 0)."""
    return 0 if symbol == EPSILON else ord(symbol)


def graph_hash(transitions: Iterable[Sequence]) -> int:
    """The original's cheap isomorphism-invariant hash (sip/data_gen/utils.py:83-93).

    The sum over arcs of (number of arcs leaving the arc's state) * hash((ilabel, olabel)); it ignores
    where arcs go, so unequal FSTs can share it. Python hashes tuples of ints the same in every run.
    """
    checked = check_transitions(transitions)
    out_degree: dict[int, int] = {}
    for transition in checked:
        out_degree[transition[0]] = out_degree.get(transition[0], 0) + 1
    return sum(out_degree[t[0]] * hash((label(t[1]), label(t[2]))) for t in checked)

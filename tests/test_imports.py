"""The import structure DESIGN.md promises, read from the source (imports inside functions included): no cycles
anywhere, the shared core imports no family, and no family imports another (t5_jax is shared model code)."""
from tests.helpers import import_graph

FAMILIES = ("sip_jax", "lsg_jax", "backpack_jax", "perceiver_jax", "flipped_jax")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(name):
        if state.get(name) == "open":
            return path[path.index(name):] + [name]
        if state.get(name) == "done":
            return None
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            # A package's __init__ that re-exports its submodules is imported by them only as the package's parent.
            if name.startswith(target + "."):
                continue
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def top(name: str) -> str:
    return name.split(".")[0]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_core_imports_no_family_and_families_import_no_other_family():
    for name, targets in import_graph().items():
        imported = {top(target) for target in targets}
        if top(name) == "jaxport":
            assert not imported - {"jaxport"}, (name, imported)
        if top(name) in FAMILIES:
            assert not imported & (set(FAMILIES) - {top(name)}), (name, imported)


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

"""The rule-table conversion framework (jaxport.convert), on synthetic tensors; the generic `python -m convert`
driver with the options and modes that families add through jaxport/registry.py."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

import convert as convert_cli
from jaxport import registry
from jaxport.convert import (
    Alias,
    ConversionError,
    Ignore,
    Rule,
    flax_to_pytorch,
    input_first_kernel,
    linear_kernel,
    pytorch_to_flax,
    select_flat,
)

D_MODEL, HEADS, D_KV, VOCAB, LAYERS = 4, 2, 3, 7, 2

RULES = [
    Rule("embed.weight", "embed/embedding"),
    Alias("lm_head.weight", "embed.weight"),
    Rule("layers.{i}.q.weight", "layers/{i}/query/kernel", linear_kernel(input_axes=1)),
    Rule("layers.{i}.o.weight", "layers/{i}/out/kernel", linear_kernel(input_axes=2)),
    Rule("layers.{i}.norm.weight", "layers/{i}/norm/scale"),
    Ignore("layers.{i}.rotary.inv_freq"),
]


def target(dtype=np.float32, layers=LAYERS) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = {"embed/embedding": (VOCAB, D_MODEL)}
    for i in range(layers):
        shapes |= {f"layers/{i}/query/kernel": (D_MODEL, HEADS, D_KV),
                   f"layers/{i}/out/kernel": (HEADS, D_KV, D_MODEL),
                   f"layers/{i}/norm/scale": (D_MODEL,)}
    return {path: jax.ShapeDtypeStruct(shape, dtype) for path, shape in shapes.items()}


def state_dict(seed=0, layers=LAYERS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {"embed.weight": rng.standard_normal((VOCAB, D_MODEL), np.float32)}
    for i in range(layers):
        tensors |= {f"layers.{i}.q.weight": rng.standard_normal((HEADS * D_KV, D_MODEL), np.float32),
                    f"layers.{i}.o.weight": rng.standard_normal((D_MODEL, HEADS * D_KV), np.float32),
                    f"layers.{i}.norm.weight": rng.standard_normal((D_MODEL,), np.float32)}
    return tensors


def test_linear_kernel_computes_the_same_projection():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(D_MODEL)
    q_weight = rng.standard_normal((HEADS * D_KV, D_MODEL))
    q_kernel = linear_kernel(1).to_flax(q_weight, (D_MODEL, HEADS, D_KV))
    np.testing.assert_allclose(np.einsum("d,dhk->hk", x, q_kernel).reshape(-1), q_weight @ x)

    heads = rng.standard_normal((HEADS, D_KV))
    o_weight = rng.standard_normal((D_MODEL, HEADS * D_KV))
    o_kernel = linear_kernel(2).to_flax(o_weight, (HEADS, D_KV, D_MODEL))
    np.testing.assert_allclose(np.einsum("hk,hkd->d", heads, o_kernel), o_weight @ heads.reshape(-1))
    assert linear_kernel(2).pytorch_shape((HEADS, D_KV, D_MODEL)) == (D_MODEL, HEADS * D_KV)


def test_input_first_kernel_computes_the_same_projection():
    """transformers' Conv1D (GPT-2): y = x @ W + b with W [in, out]; the fused q/k/v kernel (embed, 3, heads, kv)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(D_MODEL)
    weight = rng.standard_normal((D_MODEL, 3 * HEADS * D_KV))
    transform = input_first_kernel(1)
    kernel = transform.to_flax(weight, (D_MODEL, 3, HEADS, D_KV))
    np.testing.assert_allclose(np.einsum("d,dthk->thk", x, kernel).reshape(-1), x @ weight)
    assert transform.pytorch_shape(kernel.shape) == weight.shape
    np.testing.assert_array_equal(transform.to_pytorch(kernel), weight)
    out = rng.standard_normal((HEADS, D_KV, D_MODEL))  # c_proj (heads, kv, embed): two input axes
    assert input_first_kernel(2).pytorch_shape(out.shape) == (HEADS * D_KV, D_MODEL)


def test_round_trip_is_bit_identical_and_streams_a_generator():
    original = state_dict()
    flat = pytorch_to_flax(iter(original.items()), target(), RULES)
    assert {path: array.shape for path, array in flat.items()} == {p: t.shape for p, t in target().items()}
    back = flax_to_pytorch(flat, RULES)
    assert back.keys() == original.keys()  # the alias is not exported by default
    for key, array in original.items():
        assert back[key].dtype == array.dtype and np.array_equal(back[key], array), key
        assert back[key].flags.c_contiguous


def test_casts_to_the_target_dtype():
    flat = pytorch_to_flax(state_dict().items(), target(ml_dtypes.bfloat16), RULES)
    assert {array.dtype for array in flat.values()} == {np.dtype(ml_dtypes.bfloat16)}
    expected = state_dict()["embed.weight"].astype(ml_dtypes.bfloat16)
    assert np.array_equal(flat["embed/embedding"], expected)


def test_output_does_not_share_memory_with_the_source():
    source = state_dict()
    flat = pytorch_to_flax(source.items(), target(), RULES)
    assert not np.shares_memory(flat["embed/embedding"], source["embed.weight"])


def test_strict_mismatch_raises_one_error_listing_every_key():
    tensors = state_dict(layers=3)  # one layer too many -> unexpected
    del tensors["layers.0.norm.weight"]  # missing
    tensors["layers.1.q.weight"] = np.zeros((5, D_MODEL), np.float32)  # wrong shape
    tensors["pooler.dense.weight"] = np.zeros(3, np.float32)  # no rule at all
    with pytest.raises(ConversionError) as caught:
        pytorch_to_flax(tensors.items(), target(), RULES)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.missing == ["layers/0/norm/scale"]  # the misshapen one is listed once, as a mismatch
    assert set(error.unexpected) == {"layers.2.q.weight", "layers.2.o.weight", "layers.2.norm.weight",
                                     "pooler.dense.weight"}
    assert error.mismatched == ["layers.1.q.weight"]
    message = str(error)
    assert "from layers.0.norm.weight" in message  # missing paths name the key they would come from
    assert "checkpoint (5, 4), model expects (6, 4)" in message
    assert "pooler.dense.weight" in message and "layers/2/query/kernel" in message


def test_non_strict_warns_and_returns_what_fits():
    tensors = state_dict()
    del tensors["layers.1.norm.weight"]
    tensors["extra.weight"] = np.zeros(1, np.float32)
    with pytest.warns(UserWarning, match="extra.weight"):
        flat = pytorch_to_flax(tensors.items(), target(), RULES, strict=False)
    assert flat.keys() == target().keys() - {"layers/1/norm/scale"}


def test_equal_alias_is_accepted_in_any_order():
    tensors = state_dict()
    with_alias = {"lm_head.weight": tensors["embed.weight"].copy(), **tensors}  # alias before its canonical
    flat = pytorch_to_flax(with_alias.items(), target(), RULES)
    assert np.array_equal(flat["embed/embedding"], tensors["embed.weight"])


def test_alias_that_differs_is_an_error():
    tensors = state_dict()
    tensors["lm_head.weight"] = tensors["embed.weight"] + 1
    with pytest.raises(ConversionError, match="lm_head.weight: differs from embed.weight") as caught:
        pytorch_to_flax(tensors.items(), target(), RULES)
    assert caught.value.conflicting == ["lm_head.weight"]


def test_alias_with_wrong_shape_is_a_mismatch():
    tensors = state_dict()
    tensors["lm_head.weight"] = np.zeros((VOCAB + 1, D_MODEL), np.float32)
    with pytest.raises(ConversionError) as caught:
        pytorch_to_flax(tensors.items(), target(), RULES)
    assert caught.value.mismatched == ["lm_head.weight"]


def test_alias_stands_in_for_a_missing_canonical():
    tensors = state_dict()
    tensors["lm_head.weight"] = tensors.pop("embed.weight")
    flat = pytorch_to_flax(tensors.items(), target(), RULES)
    assert np.array_equal(flat["embed/embedding"], tensors["lm_head.weight"])


def test_ignored_keys_are_dropped_silently():
    tensors = {**state_dict(), "layers.0.rotary.inv_freq": np.ones(2, np.float32)}
    assert pytorch_to_flax(tensors.items(), target(), RULES).keys() == target().keys()


def test_alias_exported_only_when_asked():
    rules = [Rule("embed.weight", "embed/embedding"), Alias("lm_head.weight", "embed.weight", export=True)]
    embedding = np.arange(6, dtype=np.float32).reshape(3, 2)
    exported = flax_to_pytorch({"embed/embedding": embedding}, rules)
    assert exported.keys() == {"embed.weight", "lm_head.weight"}
    assert np.array_equal(exported["lm_head.weight"], embedding)


def test_flax_to_pytorch_rejects_parameters_without_a_rule():
    flat = pytorch_to_flax(state_dict().items(), target(), RULES)
    flat["adapter/kernel"] = np.zeros(2, np.float32)
    with pytest.raises(ConversionError, match="adapter/kernel"):
        flax_to_pytorch(flat, RULES)
    with pytest.warns(UserWarning):
        assert "adapter/kernel" not in flax_to_pytorch(flat, RULES, strict=False)


def test_select_flat_checks_names_and_shapes():
    flat = {path: np.zeros(spec.shape, np.float32) for path, spec in target().items()}
    assert select_flat(flat.items(), target(ml_dtypes.bfloat16))["embed/embedding"].dtype == ml_dtypes.bfloat16
    flat["embed/embedding"] = np.zeros((1, 1), np.float32)
    flat["stray"] = np.zeros(1, np.float32)
    del flat["layers/0/norm/scale"]
    with pytest.raises(ConversionError) as caught:
        select_flat(flat.items(), target())
    assert (caught.value.missing, caught.value.unexpected, caught.value.mismatched) == (
        ["layers/0/norm/scale"], ["stray"], ["embed/embedding"])


# ---------------------------------------------------------------------------------------------------------------
# python -m convert


def test_help_lists_every_familys_options():
    result = subprocess.run([sys.executable, "-m", "convert", "--help"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    for flag in ("--to-pytorch", "--from-bart", "--resize", "--keep-first-global-token", "--from-pretraining",
                 "--fst-config"):
        assert flag in result.stdout
    for options, _ in convert_cli.family_option_parsers():
        assert all(f"--{dest.replace('_', '-')}" in result.stdout for dest in vars(options.parse_args([])))


def test_the_command_line_is_built_without_loading_jax():
    """--help and argument errors answer at once: the family hooks' modules import no JAX (jaxport/registry.py)."""
    script = ("import sys, convert; convert.parse_args(['lsg', 'a', 'b', '--from-bart']); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("family, flags, named", [
    ("t5", ["--from-bart"], "--from-bart (lsg)"),
    ("t5", ["--max-length", "4096"], "--max-length (lsg)"),  # given at its default value: still given
    ("sip_pretrain", ["--from-pretraining"], "--from-pretraining (sip_finetune)"),
    ("lsg", ["--resize", "--fst-seed", "1"], "--fst-seed (sip_finetune)"),
])
def test_an_option_of_another_family_is_an_error(family, flags, named, capsys):
    with pytest.raises(SystemExit):
        convert_cli.parse_args([family, "src", "dst", *flags])
    assert f"not options of the {family} family: {named}" in capsys.readouterr().err


def test_family_options_default_when_not_given():
    args = convert_cli.parse_args(["lsg", "src", "dst", "--from-bart"])
    assert (args.from_bart, args.max_length, args.block_size, args.from_pretraining) == (True, 4096, None, False)


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """A family that exists only in this test: its registry entry is all it adds."""
    package = tmp_path / "toy_family"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "modeling.py").write_text(textwrap.dedent("""\
        import json
        from pathlib import Path


        class ToyModel:
            @classmethod
            def convert(cls, src, dst, **kwargs):
                Path(dst).mkdir()
                given = {"src": src, **{k: str(v) for k, v in kwargs.items()}}
                (Path(dst) / "plain.json").write_text(json.dumps(given))
        """))
    (package / "convert.py").write_text(textwrap.dedent("""\
        from pathlib import Path


        def add_convert_options(parser):
            group = parser.add_argument_group("toy --shout")
            group.add_argument("--shout", action="store_true")
            group.add_argument("--volume", type=int, default=3)


        def check_convert_options(args):
            if args.volume != 3 and not args.shout:
                raise ValueError("--volume goes with --shout")


        def run_convert_mode(args):
            if not args.shout:
                return False
            Path(args.dst).mkdir()
            (Path(args.dst) / "shouted").write_text(str(args.volume))
            return True
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.FAMILIES, "toy", registry.Family(
        "toy_family", "ToyModel", convert_cli="toy_family.convert"))
    yield
    for module in ("toy_family", "toy_family.modeling", "toy_family.convert"):
        sys.modules.pop(module, None)


def test_a_new_family_brings_its_options_and_modes_through_its_registry_entry(toy_family, tmp_path, capsys):
    assert convert_cli.main(["toy", "src", str(tmp_path / "loud"), "--shout", "--volume", "11"]) == 0
    assert (tmp_path / "loud" / "shouted").read_text() == "11"
    # No mode asked: the plain conversion, the model class's `convert`.
    assert convert_cli.main(["toy", "src", str(tmp_path / "plain"), "--to-pytorch", "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "plain" / "plain.json").read_text()) == {
        "src": "src", "dtype": "bfloat16", "pytorch": "True", "max_shard_size": "None"}
    with pytest.raises(SystemExit):
        convert_cli.parse_args(["toy", "src", "dst", "--volume", "4"])
    assert "--volume goes with --shout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_cli.parse_args(["t5", "src", "dst", "--shout"])
    assert "--shout (toy)" in capsys.readouterr().err

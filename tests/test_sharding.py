"""Data parallel, FSDP and tensor parallel are config changes: same losses, parameters sharded by the rules."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxport import config as config_lib, registry, sharding, trainer
from tests.test_trainer import CONFIG, read_metrics

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def mesh_config(data, fsdp, tensor, *extra):
    return config_lib.load_config(CONFIG, ["train.num_steps=6", "train.log_every=1", "train.eval_every=6",
                                           "train.checkpoint_every=6", f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                           f"mesh.tensor={tensor}", *extra])


def test_eight_devices_are_visible():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape", MESHES[1:])
def test_same_losses_on_every_mesh(tmp_path, shape):
    runs = {}
    for mesh in (MESHES[0], shape):
        config = mesh_config(*mesh)
        trainer.train(config, tmp_path / str(mesh), registry.task("t5", config))
        runs[mesh] = read_metrics(tmp_path / str(mesh))
    for step, expected in runs[MESHES[0]].items():
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in expected:
                np.testing.assert_allclose(runs[shape][step][key], expected[key], rtol=2e-5, err_msg=f"{key}@{step}")


def test_parameters_are_sharded_as_the_rules_say():
    # Wide enough that the checked leaves are not packed with the small ones (jaxport.packing).
    config = mesh_config(2, 2, 2, "model.d_model=256", "model.d_kv=64", "model.num_heads=8", "model.d_ff=512")
    setup = trainer.build(config, registry.task("t5", config))
    params = setup.state.params["large"]
    expected = {
        ("shared", "embedding"): P("tensor", "fsdp"),  # (vocab, embed)
        ("encoder", "layers", 0, "attention", "query", "kernel"): P("fsdp", "tensor", None),  # (embed, heads, kv)
        ("encoder", "layers", 1, "attention", "out", "kernel"): P("tensor", None, "fsdp"),  # (heads, kv, embed)
        ("decoder", "layers", 0, "mlp", "wi_0", "kernel"): P("fsdp", "tensor"),  # (embed, mlp)
        ("decoder", "layers", 0, "mlp", "wo", "kernel"): P("tensor", "fsdp"),  # (mlp, embed)
        ("lm_head", "kernel"): P("fsdp", "tensor"),  # (embed, vocab)
    }
    for path, spec in expected.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
        assert leaf.addressable_shards[0].data.size * 4 == leaf.size, path
    # The small leaves (norm scales, relative position biases) are one replicated vector; Adam's moments follow
    # their parameters.
    assert "final_norm" not in params["encoder"]
    assert setup.state.params["small"]["default.float32"].sharding.is_fully_replicated
    mu = setup.state.opt_state[1].inner_states["default"].inner_state[0].mu
    assert mu["large"]["decoder"]["layers"][0]["mlp"]["wi_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert mu["small"]["default.float32"].sharding.is_fully_replicated


def test_rules_leave_indivisible_axes_replicated():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.logical_to_spec(("vocab", "embed"), (259, 64), mesh, sharding.DEFAULT_RULES) == P(None, "fsdp")
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.make_mesh(3, 2, 2)

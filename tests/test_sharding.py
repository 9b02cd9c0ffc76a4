"""Data parallel, FSDP and tensor parallel are config changes: same losses on every mesh; the rules' edge cases.
(Each family's parameter layouts are checked in test_family_contract.py.)"""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxport import config as config_lib
from jaxport import registry, sharding, trainer
from tests.helpers import CONFIGS, read_metrics

CONFIG = str(CONFIGS / "t5_reverse.py")

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def mesh_config(data, fsdp, tensor, *extra):
    # d_ff 2048: the MLP kernels (64 x 2048) are above packing.SMALL_LEAF, so FSDP and tensor parallelism shard
    # them (smaller leaves are packed into one replicated vector per optimizer group).
    return config_lib.load_config(CONFIG, ["train.num_steps=6", "train.log_every=1", "train.eval_every=6",
                                           "train.checkpoint_every=6", f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                           f"mesh.tensor={tensor}", "model.d_ff=2048", *extra])


def test_mesh_takes_every_device_once_and_sizes_the_free_axis():
    mesh = sharding.make_mesh(-1, 2, 2)
    assert dict(mesh.shape) == {"data": jax.device_count() // 4, "fsdp": 2, "tensor": 2}
    assert sorted(device.id for device in mesh.devices.flat) == sorted(device.id for device in jax.devices())
    with pytest.raises(ValueError, match="do not divide"):
        sharding.make_mesh(-1, 3, 1)
    with pytest.raises(ValueError, match="at most one may be -1"):
        sharding.make_mesh(-1, -1, 2)


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


def test_rules_leave_indivisible_axes_replicated():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.logical_to_spec(("vocab", "embed"), (259, 64), mesh, sharding.DEFAULT_RULES) == P(None, "fsdp")
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.make_mesh(3, 2, 2)


def test_hidden_states_between_blocks_follow_the_batch_rule_in_steps_only():
    """Each T5 block's input and output is constrained to the batch rule's layout (embed's fsdp is taken by the
    batch), inside the trainer's steps; the model called on its own is left as it was."""
    config = mesh_config(2, 2, 2)
    task = registry.task("t5", config)
    setup = trainer.build(config, task)
    # (this mesh shards the MLP kernels as the losses test runs them: embed over fsdp, mlp over tensor)
    assert P("fsdp", "tensor") in {leaf.spec for leaf in jax.tree.leaves(setup.state_shardings.params)}
    batch = next(task.train_data(config))
    eval_step = jax.make_jaxpr(trainer.make_eval_step(setup, task))(setup.state.params, batch)
    constraints = [eqn.params["sharding"].spec for eqn in eval_step.eqns if eqn.primitive.name == "sharding_constraint"]
    layers = config.model.num_layers + config.model.num_decoder_layers
    assert constraints == [P(("data", "fsdp"), None, None)] * (layers + 2)  # each stack's input, each block's output
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "decoder_input_ids")}
    alone = jax.make_jaxpr(lambda params: setup.model(params)(**inputs).logits)(setup.state.params)
    assert "sharding_constraint" not in str(alone)

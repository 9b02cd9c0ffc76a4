"""The original's fine-tuning optimizer, `SIPFinetuningModel.get_optimizer(torch.optim.Adam, prefix_lr=1.0, lr=3e-4)`
(sip/embed_finetune.py:273-285): Adam with its own learning rate for `prefix_embedding` and `lr` for everything
else; the stored `prefix_init_tensor` (a buffer there) is not trained.

In the shared trainer this is a config (see configs/sip_finetune.py):

    optimizer.name = "adamw"; optimizer.weight_decay = 0.0; optimizer.learning_rate = 3e-4
    optimizer.groups.prefix = {"pattern": "^prefix_embedding", "learning_rate": 1.0}
    optimizer.groups.stored = {"pattern": "^prefix_init_tensor", "learning_rate": 0.0}

`get_optimizer` builds the same thing as a plain optax transform, for loops of one's own.
"""
import optax

from jaxport import tree

PREFIX_PATTERN = "^prefix_embedding"
STORED_PATTERN = "^prefix_init_tensor"


def optimizer_groups(prefix_lr: float = 1.0) -> dict:
    """The `optimizer.groups` entries of the shared trainer's config."""
    return {"prefix": {"pattern": PREFIX_PATTERN, "learning_rate": prefix_lr},
            "stored": {"pattern": STORED_PATTERN, "learning_rate": 0.0}}


def get_optimizer(params, prefix_lr: float = 1.0, lr: float = 3e-4, **adam_kwargs) -> optax.GradientTransformation:
    """optax Adam over a SIPFinetuningModel's parameters (a nested dict, e.g. nnx.to_pure_dict(nnx.state(model,
    nnx.Param))): `prefix_lr` for the prefix, `lr` for the rest, nothing for the stored encodings."""
    def group(path: str) -> str:
        if path == "prefix_embedding":
            return "prefix"
        return "stored" if path == "prefix_init_tensor" else "default"

    labels = tree.unflatten({path: group(path) for path in tree.flatten(params)})
    transforms = {"prefix": optax.adam(prefix_lr, **adam_kwargs), "default": optax.adam(lr, **adam_kwargs),
                  "stored": optax.set_to_zero()}
    return optax.multi_transform(transforms, labels)

"""Families by name, for the command-line tools. Imports happen on use, so a tool loads only what it needs.

Adding a family is one entry in FAMILIES. A family whose conversion has options or modes of its own names the
module (`convert_cli`) that defines `python -m convert`'s hooks for it:

    add_convert_options(parser)   adds one argument group of long options (--name-like-this, no `dest=`)
    check_convert_options(args)   optional: raises ValueError naming the options that do not go together
    run_convert_mode(args) -> bool  runs the conversion the options ask for; False when they ask for none, so
                                  that the plain conversion (the model class's `convert`) runs

Its options are errors on the command line of another family. The module is imported to build the command line
(`--help` included), so it imports no JAX at the top: its conversions import what they need when they run.
"""
import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class Family:
    package: str  # holds `modeling` (the model class) and `tasks` (get_task, for python -m train)
    model_class: str  # what a plain `python -m convert` reads and writes
    convert_cli: str | None = None  # module of the convert hooks above, if the family has options of its own


FAMILIES = {
    "t5": Family("t5_jax", "T5ForConditionalGeneration"),
    "flipped": Family("flipped_jax", "FlippedModel"),
    "lsg": Family("lsg_jax", "LSGBartForConditionalGeneration", convert_cli="lsg_jax.convert_cli"),
    "sip_pretrain": Family("sip_jax", "SIPPreTrainingModel"),
    "sip_finetune": Family("sip_jax", "SIPFinetuningModel", convert_cli="sip_jax.convert_cli"),
    "backpack": Family("backpack_jax", "BackpackGPT2LMHeadModel"),
    # Backpack's contextualization network on its own: the paper's Transformer baseline.
    "gpt2": Family("backpack_jax", "GPT2LMHeadModel"),
    # One package, two heads: masked byte prediction (pre-training) and sequence classification (GLUE).
    "perceiver": Family("perceiver_jax", "PerceiverForMaskedLM"),
    "perceiver_cls": Family("perceiver_jax", "PerceiverForSequenceClassification"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def model_class(name: str):
    entry = family(name)
    return getattr(importlib.import_module(f"{entry.package}.modeling"), entry.model_class)


def task(name: str, config):
    """The family's training task (see jaxport.trainer.Task) for this config."""
    return importlib.import_module(f"{family(name).package}.tasks").get_task(config)


def convert_clis() -> list[tuple[ModuleType, tuple[str, ...]]]:
    """Every module of convert hooks (imported now), with the families whose options it adds."""
    families: dict[str, tuple[str, ...]] = {}
    for name, entry in FAMILIES.items():
        if entry.convert_cli:
            families[entry.convert_cli] = families.get(entry.convert_cli, ()) + (name,)
    return [(importlib.import_module(module), names) for module, names in families.items()]


def convert_cli(name: str) -> ModuleType | None:
    """The module of the family's convert hooks, or None if it has none."""
    module = family(name).convert_cli
    return importlib.import_module(module) if module else None

"""Families by name, for the command-line tools. Imports happen on use, so a tool loads one family only."""
import importlib

# name -> (package, model class for `python -m convert`)
FAMILIES = {
    "t5": ("t5_jax", "T5ForConditionalGeneration"),
    "lsg": ("lsg_jax", "LSGBartForConditionalGeneration"),
    "sip_pretrain": ("sip_jax", "SIPPreTrainingModel"),
    "sip_finetune": ("sip_jax", "SIPFinetuningModel"),
}


def _package(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family][0]


def model_class(family: str):
    package = _package(family)
    return getattr(importlib.import_module(f"{package}.modeling"), FAMILIES[family][1])


def task(family: str, config):
    """The family's training task (see jaxport.trainer.Task) for this config."""
    return importlib.import_module(f"{_package(family)}.tasks").get_task(config)

"""Runs the original PyTorch LSG-BART (lsg-converter 0.1.9, transformers 4.44.2) for the parity tests.

Runs only under the reference environment made by make_env.sh:

    .venv-lsg/bin/python tests/lsg_reference/reference.py JOBS.json

JOBS.json holds a list of jobs, done in order in one process (torch starts once):
  {"action": "build", "folder", "config": {...}, "lsg": bool, "seed", "bin": bool, "tokenizer": bool}
      a random tiny (LSG-)BART saved as an HF folder; every weight random (layer norms near 1), so a
      mis-mapped tensor cannot hide behind an initialisation of zeros or ones.
  {"action": "run", "folder", "lsg": bool, "device": optional torch device (default "cpu"),
   "inputs": npz with input_ids / attention_mask / decoder_input_ids,
   "lsh": optional npz of projections proj_0, proj_1, ... (one encoder pass, in draw order),
   "generate": [kwargs, ...], "out": npz}
      forward logits and encoder states, then generate() for each kwargs -> gen_0, gen_1, ...
  {"action": "convert", "src", "dst", "max_length", "kwargs": {...}, "stride": int,
   "options": {"random_global_init", "keep_first_global_token", "resize_lsg"}, "normals": optional npz with eps}
      lsg-converter's BART -> LSG-BART conversion of src, saved to dst; under random_global_init, the standard
      normals of its MultivariateNormal draw are `eps` (512 x d_model) instead of torch's.
"""
import json
import sys

import numpy as np
import torch


def build(job):
    import transformers
    from lsg_converter.bart.modeling_lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

    if job["lsg"]:
        model = LSGBartForConditionalGeneration(LSGBartConfig(**job["config"]))
    else:
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(**job["config"]))
    generator = torch.Generator().manual_seed(job["seed"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layer_norm" in name or "layernorm" in name:
                param.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                param.copy_(job.get("std", 0.2) * noise)
        model.final_logits_bias.copy_(0.5 * torch.randn(model.final_logits_bias.shape, generator=generator))
    model.save_pretrained(job["folder"], safe_serialization=not job.get("bin", False))
    if job.get("tokenizer"):
        save_tokenizer(job["folder"], job["config"]["vocab_size"])


def save_tokenizer(folder, vocab_size):
    """A tiny byte-level BPE tokenizer: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last."""
    import os

    import transformers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"t{i}": i for i in range(4, vocab_size - 1)})
    vocab["<mask>"] = vocab_size - 1
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/vocab.json", "w") as f:
        json.dump(vocab, f)
    with open(f"{folder}/merges.txt", "w") as f:
        f.write("#version: 0.2\n")
    transformers.BartTokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt").save_pretrained(folder)


class ProjectionQueue:
    """Stands in for torch.randn inside lsh_round: hands out the given projections in order."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.position = 0
        self.real_randn = torch.randn

    def __call__(self, *shape, **kwargs):
        if self.position >= len(self.arrays):
            raise RuntimeError("the reference drew more LSH projections than were given")
        array = self.arrays[self.position]
        self.position += 1
        wanted = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
        # lsh_round draws (1, heads, 1, head_dim, n_hashes); ours are (heads, head_dim, n_hashes).
        if wanted != (1, array.shape[0], 1, *array.shape[1:]):
            raise RuntimeError(f"projection {self.position - 1}: reference wants {wanted}, given {array.shape}")
        return torch.from_numpy(array).reshape(wanted)

    def __enter__(self):
        self.position = 0
        torch.randn = self
        return self

    def __exit__(self, *exc):
        torch.randn = self.real_randn
        if exc[0] is None and self.position != len(self.arrays):
            raise RuntimeError(f"the reference drew {self.position} of {len(self.arrays)} LSH projections")


class NoProjections:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(job):
    import transformers
    from lsg_converter.bart.modeling_lsg_bart import LSGBartForConditionalGeneration

    cls = LSGBartForConditionalGeneration if job["lsg"] else transformers.BartForConditionalGeneration
    device = job.get("device", "cpu")
    model = cls.from_pretrained(job["folder"]).to(device).eval()
    inputs = np.load(job["inputs"])
    ids, mask, dec = (torch.from_numpy(inputs[name]).long().to(device)
                      for name in ("input_ids", "attention_mask", "decoder_input_ids"))
    if job.get("lsh"):
        stored = np.load(job["lsh"])
        projections = ProjectionQueue([stored[f"proj_{i}"] for i in range(len(stored.files))])
    else:
        projections = NoProjections()
    out = {}
    with torch.no_grad():
        with projections:  # the encoder edits the mask in place (mask_first_token): give it a copy
            result = model(input_ids=ids, attention_mask=mask.clone(), decoder_input_ids=dec)
        out["logits"] = result.logits.cpu().numpy()
        out["encoder"] = result.encoder_last_hidden_state.cpu().numpy()
        for number, kwargs in enumerate(job.get("generate", [])):
            with projections:
                generated = model.generate(input_ids=ids, attention_mask=mask.clone(), **kwargs)
                out[f"gen_{number}"] = generated.cpu().numpy()
    np.savez(job["out"], **out)


class GivenNormals:
    """Stands in for the standard normals that MultivariateNormal.rsample draws."""

    def __init__(self, path):
        self.eps = np.load(path)["eps"] if path else None
        self.calls = 0

    def __call__(self, shape, dtype, device):
        self.calls += 1
        if tuple(shape) != self.eps.shape:
            raise RuntimeError(f"MultivariateNormal draws {tuple(shape)}, given {self.eps.shape}")
        return torch.from_numpy(self.eps).to(dtype)

    def __enter__(self):
        from torch.distributions import multivariate_normal
        self.real, self.module = multivariate_normal._standard_normal, multivariate_normal
        if self.eps is not None:
            multivariate_normal._standard_normal = self
        return self

    def __exit__(self, *exc):
        self.module._standard_normal = self.real
        if exc[0] is None and self.eps is not None and self.calls != 1:
            raise RuntimeError(f"the given normals were drawn {self.calls} times instead of once")


def convert(job):
    from lsg_converter import LSGConverter

    converter = LSGConverter(max_sequence_length=job["max_length"], global_positional_stride=job.get("stride", 64),
                             **job.get("options", {}))
    with GivenNormals(job.get("normals")):
        model, tokenizer = converter.convert_from_pretrained(job["src"], **job.get("kwargs", {}))
    model.save_pretrained(job["dst"])
    tokenizer.save_pretrained(job["dst"])


def main(path):
    with open(path) as f:
        jobs = json.load(f)
    actions = {"build": build, "run": run, "convert": convert}
    for job in jobs:
        actions[job["action"]](job)


if __name__ == "__main__":
    main(sys.argv[1])

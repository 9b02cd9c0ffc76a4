"""What several test modules share: relative error, padded batches, bit-level comparisons, tiny PyTorch reference
models (T5, SIP, Backpack-GPT2 and GPT-2; LSG-BART's runs in its own environment, tests/lsg_reference), tiny data
files, and running `python -m train` in a subprocess. Test modules import this, never each other."""
import ast
import functools
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx

from jaxport import tree
from jaxport.hf import find_weights, iter_tensors
from sip_jax.convert import pad_fst_reps

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


# ---------------------------------------------------------------------------------------------------------------
# The default run and CI's


def slow_but(fast: tuple[str, ...], names, ids=str) -> list:
    """pytest params of `names`, all but those `fast` names marked slow: a check repeated per family or per
    document runs for one or two of them by default (under 20 minutes on 2 cores) and for all in CI, which adds
    `-m "slow or not slow"`."""
    return [pytest.param(name, id=ids(name), marks=() if ids(name) in fast else pytest.mark.slow) for name in names]


# ---------------------------------------------------------------------------------------------------------------
# Missing references: a skip on a laptop, a failure in CI


def in_ci() -> bool:
    """CI sets CI (`CI=true bash .ci/run`); there a test must not pass by skipping its reference."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def skip_unless_ci(reason: str):
    """Skip with `reason`, or fail with it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing reference fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------------------
# Arrays


def rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected|| over all elements."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def padded_batch(rng: np.random.Generator, vocab: int, lengths=(30, 20, 5), dec_length: int = 25, low: int = 2):
    """(input ids, attention mask, decoder input ids) of len(lengths) rows; row i has lengths[i] real tokens and is
    padded to max(lengths). Token ids are drawn from [low, vocab)."""
    ids = rng.integers(low, vocab, (len(lengths), max(lengths)))
    mask = (np.arange(max(lengths)) < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids, mask, rng.integers(low, vocab, (len(lengths), dec_length))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_bits(actual: dict, expected: dict):
    """Same keys, and each array the same dtype, shape and bytes."""
    assert sorted(actual) == sorted(expected)
    for key, array in expected.items():
        assert same_bits(np.ascontiguousarray(actual[key]), np.ascontiguousarray(array)), key


def flax_params(model) -> dict[str, np.ndarray]:
    """A Flax model's parameters as {path: array}."""
    return {path: np.asarray(value)
            for path, value in tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def folder_tensors(folder) -> dict[str, np.ndarray]:
    """The tensors of an HF folder's weight files (safetensors or .bin, sharded or not)."""
    return {key: np.array(value) for key, value in iter_tensors(find_weights(folder).files)}


# ---------------------------------------------------------------------------------------------------------------
# Tiny PyTorch references: transformers' T5, and SIP built on it


def random_torch_t5(seed: int | None = None, **config) -> transformers.T5ForConditionalGeneration:
    """A random transformers T5 in eval mode. transformers 5 ties lm_head to the embedding whatever the config says
    (tie_word_embeddings=False only turns off output scaling), so an untied head gets its own random weights."""
    if seed is not None:
        torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config))
    if not config.get("tie_word_embeddings", True):
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model.eval()


def random_torch_perceiver(model_class, seed: int = 0, **config) -> torch.nn.Module:
    """A transformers Perceiver text model (PerceiverForMaskedLM, PerceiverForSequenceClassification) in eval mode,
    every weight redrawn: N(0, 0.3^2), LayerNorm scales 1 + N(0, 0.1^2). transformers' initialisation (std 0.02, zero
    biases) leaves the logits almost flat, so an error in most weights would hardly move them."""
    torch.manual_seed(seed)
    model = model_class(transformers.PerceiverConfig(**config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm_scale = "layernorm" in name and name.endswith(".weight")
            param.copy_(1 + 0.1 * torch.randn_like(param) if is_norm_scale else 0.3 * torch.randn_like(param))
    return model


SIP_VOCAB = 64
SIP_T5_KWARGS = dict(vocab_size=SIP_VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                     num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                     dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False)
FST_KWARGS = {
    "linear": dict(num_states=7, fst_tokenizer_vocab_size=30, state_embedding_dim=6, token_embedding_dim=10,
                   final_state_embedding_dim=4, num_final_state_info=3, mlp_hidden_dim=None),
    "mlp": dict(num_states=7, fst_tokenizer_vocab_size=30, state_embedding_dim=6, token_embedding_dim=10,
                final_state_embedding_dim=0, num_final_state_info=3, mlp_hidden_dim=24),
}
PREFIX_KWARGS = dict(num_examples=3, prefix_length=5, random_selection=False, prefix_max_init_length=7,
                     num_precomputed_examples=6)


class TorchFSTEncoder(torch.nn.Module):
    """SIP's FST encoder in torch, with the original's attribute (hence state-dict key) names: state, symbol and
    final-flag embeddings concatenated, then a linear layer or Linear-GELU-Dropout-Linear."""

    def __init__(self, fst, d_model):
        super().__init__()
        self.state_embeddings = torch.nn.Embedding(fst["num_states"], fst["state_embedding_dim"])
        self.token_embeddings = torch.nn.Embedding(fst["fst_tokenizer_vocab_size"], fst["token_embedding_dim"])
        self.final_state_embedding = torch.nn.Embedding(fst["num_final_state_info"], fst["final_state_embedding_dim"])
        features = 2 * fst["state_embedding_dim"] + 2 * fst["token_embedding_dim"] + fst["final_state_embedding_dim"]
        self.use_mlp = fst["mlp_hidden_dim"] is not None
        if self.use_mlp:
            self.down_project = torch.nn.Linear(features, fst["mlp_hidden_dim"])
            self.dropout = torch.nn.Dropout(0.1)
            self.output_layer = torch.nn.Linear(fst["mlp_hidden_dim"], d_model)
        else:
            self.input_layer = torch.nn.Linear(features, d_model)

    def encode_fst(self, rep):
        parts = [self.state_embeddings(rep[:, :, 0]), self.state_embeddings(rep[:, :, 3]),
                 self.token_embeddings(rep[:, :, 1:3]).flatten(2)]
        if rep.shape[-1] == 5:
            parts.append(self.final_state_embedding(rep[:, :, 4]))
        x = torch.cat(parts, dim=2)
        if self.use_mlp:
            return self.output_layer(self.dropout(torch.nn.functional.gelu(self.down_project(x))))
        return self.input_layer(x)


class TorchSIPPretraining(TorchFSTEncoder):
    """SIP pre-training as the original runs it: the FST encoding ++ the embedded input, as inputs_embeds of a T5."""

    def __init__(self, fst):
        super().__init__(fst, SIP_T5_KWARGS["d_model"])
        self.model = random_torch_t5(**SIP_T5_KWARGS)

    def prepend(self, input_ids, attention_mask, fst_rep):
        fst = self.encode_fst(fst_rep)
        embeds = torch.cat([fst, self.model.get_input_embeddings()(input_ids)], dim=1)
        ones = torch.ones(fst.shape[:2], dtype=attention_mask.dtype)
        return embeds, torch.cat([ones, attention_mask], dim=1)


class TorchSIPFinetuning(torch.nn.Module):
    """SIP fine-tuning as the original runs it: a tunable prefix ++ the embedded input, as inputs_embeds of a T5."""

    def __init__(self, prefix):
        super().__init__()
        self.model = random_torch_t5(**SIP_T5_KWARGS)
        d = SIP_T5_KWARGS["d_model"]
        self.register_buffer("prefix_init_tensor", torch.randn(prefix["num_precomputed_examples"],
                                                               prefix["prefix_max_init_length"], d))
        self.prefix_embedding = torch.nn.Parameter(torch.randn(1, prefix["prefix_length"], d))

    def prepend(self, input_ids, attention_mask):
        embeds = self.model.get_input_embeddings()(input_ids)
        prefix = self.prefix_embedding.repeat_interleave(input_ids.shape[0], 0)
        ones = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype)
        return torch.cat([prefix, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


def original_prefix_init(init_tensor, num_examples, prefix_length, permutation=None):
    """The original's `_initialize_prefix` (sip/embed_finetune.py:215-223), in torch, on a given permutation."""
    if permutation is not None:
        init_tensor = init_tensor[torch.as_tensor(np.array(permutation)), :, :]
    return init_tensor[:num_examples, :prefix_length, :].mean(dim=0, keepdim=True)


def save_original_layout(reference, folder, model_type, sip_fields, drop_duplicates=False):
    """config.json and model.safetensors as the original's Hub classes write them (T5 fields flat)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**reference.model.config.to_dict(), **sip_fields, "model_type": model_type,
              "architectures": ["SIPFinetuningModel" if model_type == "sip_finetune" else "SIPPreTrainingModel"]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {key: value.detach().clone().contiguous() for key, value in reference.state_dict().items()}
    if drop_duplicates:  # what newer transformers write: the tied copies of model.shared.weight left out
        state = {k: v for k, v in state.items() if not k.endswith("embed_tokens.weight")}
    safetensors.torch.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def random_fsts(rng, fst, lengths, width=5):
    """Random transition arrays of the given lengths, padded as the model takes them."""
    reps = []
    for length in lengths:
        rep = np.stack([rng.integers(0, fst["num_states"] - 1, length),
                        rng.integers(1, fst["fst_tokenizer_vocab_size"], length),
                        rng.integers(1, fst["fst_tokenizer_vocab_size"], length),
                        rng.integers(0, fst["num_states"] - 1, length),
                        rng.integers(1, 3, length)], axis=1)[:, :width]
        reps.append(rep)
    return pad_fst_reps(reps, fst["num_states"])


# ---------------------------------------------------------------------------------------------------------------
# Tiny PyTorch references: the authors' Backpack-GPT2, transformers' GPT-2

BACKPACK_FILE = "models/backpack_gpt2/modelings_backpack_gpt2.py"
# Small and without dropout; bos/eos None: transformers complains about ids outside a tiny vocabulary.
GPT2_TINY = dict(vocab_size=61, n_embd=24, n_layer=2, n_head=4, n_positions=20, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)


@functools.cache
def backpack_reference():
    """The authors' modeling file (BackpackGPT2Config, BackpackGPT2LMHeadModel, ...) as a module. It ships in
    pyvene 0.1.8 (installed with --no-deps, see .ci/run); loaded by path, since importing the pyvene package pulls
    in dependencies the file does not need (find_spec of a top-level package does not import it)."""
    spec = importlib.util.find_spec("pyvene")
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / BACKPACK_FILE
    if path is None or not path.is_file():
        skip_unless_ci("the authors' Backpack file is missing: pip install --no-deps pyvene==0.1.8")
    module_spec = importlib.util.spec_from_file_location("modelings_backpack_gpt2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Every parameter drawn again from N(0, std^2) (LayerNorm scales around 1), so that nothing is at a value
    (0, 1, a tiny init) that could hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            param.copy_(noise + 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "ln.weight"))
                        else noise)
    return model.eval()


def random_backpack(seed: int = 0, std: float = 0.3, **config):
    """The authors' BackpackGPT2LMHeadModel with random weights (`randomize`), GPT2_TINY shaped unless `config` says
    otherwise."""
    module = backpack_reference()
    model = module.BackpackGPT2LMHeadModel(module.BackpackGPT2Config(**{**GPT2_TINY, **config}))
    return randomize(model, seed, std)


def random_gpt2(seed: int = 0, std: float = 0.3, **config) -> transformers.GPT2LMHeadModel:
    """transformers' GPT2LMHeadModel with random weights (`randomize`), GPT2_TINY shaped unless `config` says
    otherwise."""
    return randomize(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2_TINY, **config})), seed, std)


def save_backpack(model, folder: Path, *, model_type: str = "backpack-gpt2", aliases: bool = True,
                  bin_file: bool = False) -> Path:
    """config.json and weights as the authors' folders hold them: model_type "backpack-gpt2" or "gpt2" (what their
    config class writes), every key of the state dict or (aliases=False) without the tied copies lm_head.weight,
    backpack.word_embeddings.weight and backpack.position_embeddings.weight; model.safetensors or
    pytorch_model.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "model_type": model_type, "architectures": ["BackpackGPT2LMHeadModel"]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    if not aliases:
        for key in ("lm_head.weight", "backpack.word_embeddings.weight", "backpack.position_embeddings.weight"):
            del state[key]
    if bin_file:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        safetensors.torch.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def greedy_loop(forward, input_ids: np.ndarray, num_new: int) -> np.ndarray:
    """Greedy decoding as a loop over a full forward pass (`forward(ids) -> logits`), no cache: the reference for
    generation of the models that have no `generate` (the authors' Backpack)."""
    ids = torch.as_tensor(input_ids)
    with torch.no_grad():
        for _ in range(num_new):
            ids = torch.cat([ids, forward(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids.numpy()


# ---------------------------------------------------------------------------------------------------------------
# Tiny data files


def write_tsv(path, rows, header=True) -> str:
    """A TSV of (input, output) rows, as SIP fine-tuning reads them."""
    lines = (["input\toutput"] if header else []) + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def stand_in_fst_tokenizer(path):
    """A word-level tokenizer file in the original's format over the generator's symbols (the original file,
    unicode_char_tokenizer_ipa.json, is the FST package's to provide); (path, vocabulary size)."""
    from sip_jax.fst.settings import VOCAB  # the FST package needs pynini: only those tests call this
    symbols = ["[PAD]", *VOCAB, *map(chr, (17, 18, 19, 20))]
    spec = {"version": "1.0", "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}],
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated"},
            "model": {"type": "WordLevel", "vocab": {s: i for i, s in enumerate(symbols)}, "unk_token": "[PAD]"}}
    path.write_text(json.dumps(spec))
    return path, len(symbols)


SUMMARY_WORDS = ("the model reads long documents and writes short summaries of their content while sparse "
                 "attention keeps memory low for thousands of tokens in each block with global tokens").split()


def sentence(rng, length):
    """A sentence of `length` words of SUMMARY_WORDS."""
    return " ".join(rng.choice(SUMMARY_WORDS) for _ in range(length)) + " ."


def _article(rng, num_sentences):
    article = [sentence(rng, rng.randint(6, 14)) for _ in range(num_sentences)]
    return {"article": "\n".join(article), "abstract": " ".join(article[:2])}


def write_summarization_files(folder: Path) -> Path:
    """For configs/lsg_arxiv.py:tiny: a tiny BART-like tokenizer (<s>=0 <pad>=1 </s>=2, texts as `<s> ... </s>`) in
    folder/tokenizer, and folder/train.jsonl, folder/eval.jsonl: articles of 30 to 300 tokens (past the 2 x 32 tokens
    where LSG's sparse path starts, and one longer than the model's 256), 11 evaluation articles."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    train = [_article(rng, rng.randint(3, 20)) for _ in range(23)] + [_article(rng, 40)]  # the last: > 256 tokens
    rng.shuffle(train)
    evaluation = [_article(rng, rng.randint(3, 12)) for _ in range(11)]

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([e["article"] for e in train], trainers.WordLevelTrainer(
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>",
                                         eos_token="</s>", unk_token="<unk>").save_pretrained(folder / "tokenizer")
    for name, rows in (("train", train), ("eval", evaluation)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Language-model corpora

LM_TOPICS = {  # a small English-like corpus: each document keeps to one topic, so its words predict one another
    "animals": "the cat and the dog ran across the field while a small bird sang in the old tree".split(),
    "cooking": "she cooked rice with fresh garlic and onion then served the soup with warm bread".split(),
    "sailing": "the sailors raised the white sail and the ship left the harbour for the open sea".split(),
}


def lm_document(rng, num_sentences: int) -> str:
    topic = LM_TOPICS[rng.choice(sorted(LM_TOPICS))]
    return " ".join(" ".join(rng.choice(topic) for _ in range(rng.randint(4, 9))) + " ."
                    for _ in range(num_sentences))


def write_lm_corpus(folder: Path, num_train: int = 200, num_eval: int = 20) -> Path:
    """folder/train.jsonl and folder/eval.jsonl: {"text": document} lines of 1 to 6 sentences over LM_TOPICS."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", num_train), ("eval", num_eval)):
        rows = [{"text": lm_document(rng, rng.randint(1, 6))} for _ in range(count)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def write_gpt2_style_tokenizer(folder: Path, texts, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer like GPT-2's, trained on `texts`: `<|endoftext|>` (id 0) is its bos, eos and unk,
    and it has no pad token. Saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                         eos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Training runs

TIMING_KEYS = {"tokens_per_sec", "steps_per_sec", "input_wait_fraction"}


def run_train(workdir, config: str, *args, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m train --config CONFIG --workdir WORKDIR ARGS` (in this environment updated by `env`); its
    stderr goes to a file (a pipe nobody reads would block it), whose path is `process.log_path`."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with open(Path(workdir) / f"stderr-{time.time_ns()}.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "train", "--config", config, "--workdir", str(workdir),
                                    *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                   env={**os.environ, **(env or {})})
    process.log_path = log.name
    return process


def stderr_of(process) -> str:
    return Path(process.log_path).read_text()


def launched_pid(launcher, index: int) -> int:
    """The pid of process `index` of a `--num-processes` run (`run_train`), from the launcher's log."""
    deadline = time.time() + 120
    while not (found := re.search(rf"process {index} of \d+: pid (\d+)", stderr_of(launcher))):
        assert launcher.poll() is None and time.time() < deadline, stderr_of(launcher)[-3000:]
        time.sleep(0.05)
    return int(found[1])


def is_running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_checkpoint(process, workdir, timeout: float = 900) -> None:
    """Until WORKDIR has a complete checkpoint; fails if `process` ends first."""
    deadline = time.time() + timeout
    while not finalized_steps(workdir):
        assert process.poll() is None and time.time() < deadline, stderr_of(process)[-3000:]
        time.sleep(0.02)


def read_metrics(workdir) -> dict[int, dict]:
    """metrics.jsonl as {step: metrics}, without the timings (which differ from run to run)."""
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records}


def finalized_steps(workdir) -> list[int]:
    """The steps of the complete checkpoints in WORKDIR/checkpoints."""
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


PROJECT_PACKAGES = ("jaxport", "t5_jax", "sip_jax", "lsg_jax", "backpack_jax", "perceiver_jax", "flipped_jax")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages and the two tools."""
    modules = {"train": ROOT / "train.py", "convert": ROOT / "convert.py"}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                # `from pkg import mod` imports pkg (its __init__) and, where it names a submodule, that module.
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
        graph[name] = targets - {name}
    return graph

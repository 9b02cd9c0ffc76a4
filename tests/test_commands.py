"""The commands README.md and the configs' docstrings show run, on tiny inputs; `python -m train` ends with a
summary of the run.

Commands are read from those texts (lines of shell code, inline `python -m ...` spans), so this test follows them
when they change. Each runs in a fresh folder per text, in the order shown, in this process (the tests' 8 CPU
devices), after these substitutions (no internet here):
  - a source folder or hub id that does not exist (not under runs/, where the commands write) becomes a tiny
    model of the family the command reads (`convert FAMILY SRC`, or --config.init_from of a config), with a
    tokenizer beside it where the config reads it from there;
  - a missing tokenizer folder or data file (--config.data.*_path, by extension: .tsv or .jsonl) is made tiny;
  - a config is loaded as `:tiny` (every config has that preset), for 2 steps, evaluation without generation;
    a batch size that the 8 devices do not divide keeps the batch whole (mesh data=1, tensor=-1) unless the
    command sets the mesh;
  - in brackets: `[same --config.* flags]` are those of the earlier command with the same --workdir; other
    optional parts are left out. A bare `python -m MODULE` in prose names a tool: it is checked to be runnable;
    `--help` runs as it is.
A command that cannot run here is in NOT_RUN with the reason; anything else that is not `python -m ...` fails.
"""
import ast
import contextlib
import importlib.util
import json
import logging
import re
import runpy
import shlex
import sys
from functools import cache
from pathlib import Path

import jax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from jaxport import config as config_lib
from jaxport import registry, trainer
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
SETUP = "sets up or changes the Python environment these tests run in"
NOT_RUN = {
    "python3 -m venv .venv": SETUP,
    ". .venv/bin/activate": SETUP,
    "pip install -e '.[sip]'": SETUP,
    "pip install -e '.[test]'": SETUP,
    "pip install -e '.[torch]'": SETUP,
    "pip install -e '.[gpu]'": SETUP,
    "pip install --no-deps pyvene==0.1.8": SETUP,
    "pip install datasets": SETUP,
    "bash tests/lsg_reference/make_env.sh": "downloads the LSG-BART reference environment (.venv-lsg)",
    "python -m pytest -q tests": "the whole test suite, this file included",
    'python -m pytest -q -m "slow or not slow" tests': "the whole test suite with the slow tests, as CI runs it",
    "python -m train --config configs/lsg_arxiv.py --workdir runs/lsg_arxiv --config.init_from=path/to/lsg-bart-folder":
        "reads TFDS scientific_papers/arxiv (array_record), which `tfds build` downloads: no local substitute",
    "python -m train --config configs/t5_reverse.py --workdir runs/x --num-processes 4 --config.mesh.fsdp=4":
        "one process per GPU: tests/test_multiprocess.py runs this launch (two CPU processes)",
    "python -m flipped_jax.evaluate --model FOLDER --data FILE":
        "reads a FLIPPED model folder with its tokenizer and an evaluation JSONL: tests/test_flipped_data.py runs it "
        "on a tiny model and tokenizer it builds",
}
# A convert mode that reads another family's checkpoint: the tiny source is of that family (overrides of its model).
MODE_SOURCES = {"--from-bart": ("lsg", {"lsg": False}), "--from-pretraining": ("sip_pretrain", {})}
# Where a config has the key. Generation in evaluation is the families' tests' business, and slow to compile.
TINY_OVERRIDES = {"train.num_steps": 2, "data.num_eval_examples": 8, "eval.generate": False}
MESH_KEYS = {"mesh.data", "mesh.fsdp", "mesh.tensor"}
WORDS = "the model reads long texts and writes short summaries of what they say".split()
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # BART's ids 0-4


def doc_texts() -> dict[str, str]:
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for path in sorted((ROOT / "configs").glob("*.py")):
        texts[f"configs/{path.name}"] = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    return texts


def commands_in(text: str) -> list[str]:
    """Lines of shell code (continuations joined, `a && b` split, comments cut), then inline command spans."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip().startswith(("python ", "python3 ", "pip ", "bash ", ". ")):
            found += line.split(" && ")
    found += re.findall(r"`((?:python -m|pip install) [^`]+)`", text)
    return [re.sub(r"\s+#.*$", "", " ".join(command.split())) for command in found]


TEXTS = doc_texts()


# ---------------------------------------------------------------------------------------------------------------
# Tiny inputs


@cache
def tiny_config_files() -> dict[str, str]:
    """family -> the config file whose `:tiny` preset trains it."""
    return {config_lib.load_config(f"{path}:tiny").family: str(path) for path in sorted(ROOT.glob("configs/*.py"))}


def load_tiny_config(spec: str, args: list[str] = ()):
    """The config of `path.py[:preset]` as `path.py:tiny`, with the --config.* flags among args."""
    return config_lib.load_config(spec.partition(":")[0] + ":tiny", config_lib.split_config_args(args)[0])


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with BART's special ids, texts as `<s> ... </s>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS + ["."])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(folder)


def save_tiny_model(folder: Path, config, **model_overrides) -> None:
    """The model of a (tiny) config, in PyTorch layout as on the hub; its tokenizer beside it when the config
    reads the tokenizer from the model folder."""
    model_class = registry.model_class(config.family)
    model_config = model_class.config_class.from_dict({**config.model.to_dict(), **model_overrides})
    model_class(model_config, rngs=nnx.Rngs(0)).save_pretrained(folder, pytorch=True)
    if not config.data.tokenizer:
        save_tokenizer(folder)


def write_examples(path: Path, data) -> None:
    """40 short input/target pairs under the config's data keys: TSV with a header line, or JSONL; for a
    language-model corpus, 40 JSONL documents of about 20 words under its text key."""
    rows = [(" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)), WORDS[i % len(WORDS)]) for i in range(40)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if "text_key" in data:
        path.write_text("".join(json.dumps({data.text_key: f"{a} {' '.join(WORDS)} {b} ."}) + "\n" for a, b in rows))
    elif path.suffix == ".tsv":
        path.write_text("".join(f"{a}\t{b}\n" for a, b in [(data.input_key, data.target_key), *rows]))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({data.input_key: a, data.target_key: b}) + "\n" for a, b in rows))
    else:
        raise ValueError(f"no tiny stand-in for data file {path}")


def is_placeholder(value: str) -> bool:
    """A path or hub id that a command reads and no earlier command wrote."""
    return bool(value) and not value.startswith("runs/") and not Path(value).exists()


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def config_overrides(args: list[str]) -> dict[str, str]:
    return dict(override.partition("=")[::2] for override in config_lib.split_config_args(args)[0])


def make_inputs(module: str, args: list[str]) -> None:
    if module == "convert":
        family, src = args[0], args[1]
        source_family, overrides = next((MODE_SOURCES[flag] for flag in args if flag in MODE_SOURCES), (family, {}))
        if is_placeholder(src):
            save_tiny_model(Path(src), load_tiny_config(tiny_config_files()[source_family]), **overrides)
        return
    if module == "backpack_jax.senses":
        if is_placeholder(args[0]):  # a Backpack folder: the tiny one, with a tokenizer beside it
            save_tiny_model(Path(args[0]), load_tiny_config(tiny_config_files()["backpack"]))
            save_tokenizer(Path(args[0]))
        return
    if "--config" not in args:
        return
    config = load_tiny_config(option(args, "--config"), args)
    for key, value in config_overrides(args).items():
        if not is_placeholder(value):
            continue
        if key == "init_from":
            save_tiny_model(Path(value), config)
        elif key == "data.tokenizer" and value != "bytes":
            save_tokenizer(Path(value))
        elif key.startswith("data.") and key.endswith("_path"):
            write_examples(Path(value), config.data)


def tiny_args(module: str, args: list[str]) -> list[str]:
    if "--config" in args:
        spec = option(args, "--config")
        keys = config_lib.all_keys(load_tiny_config(spec, args))
        args = [spec.partition(":")[0] + ":tiny" if arg == spec else arg for arg in args]
        args += [f"--config.{key}={value}" for key, value in TINY_OVERRIDES.items() if key in keys]
        batch_size = config_overrides(args).get("train.batch_size")
        if batch_size and int(batch_size) % jax.device_count() and not config_overrides(args).keys() & MESH_KEYS:
            args += ["--config.mesh.data=1", "--config.mesh.tensor=-1"]
    if module == "convert" and "--from-pretraining" in args:
        args = [*args, "--num-precomputed-examples", "4", "--prefix-max-init-length", "24"]
        if "--fst-config" not in args and "--fst-tokenizer" not in args:
            args += ["--fst-tokenizer", "builtin"]  # the tiny source's FST vocabulary (no IPA file here)
    return args


def resolve_brackets(args: list[str], flags_by_workdir: dict[str, list[str]]) -> list[str]:
    out, bracket = [], []
    for arg in args:
        if bracket or arg.startswith("["):
            bracket.append(arg)
            if arg.endswith("]"):
                if " ".join(bracket) == "[same --config.* flags]":
                    out += flags_by_workdir[option(out, "--workdir")]
                bracket = []
        else:
            out.append(arg)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Running


def has_main(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations:  # a package: python -m runs its __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return 'if __name__ == "__main__":' in Path(spec.origin).read_text()


@contextlib.contextmanager
def logging_kept():
    """train.main configures logging for a console; give pytest its handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def run_module(module: str, args: list[str], monkeypatch, capsys) -> str:
    """`python -m MODULE ARGS` in this process; its standard output. The module runs as a fresh `python -m` would
    find it, unimported (runpy warns when another test has imported it already)."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.delitem(sys.modules, module, raising=False)
    with logging_kept():
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            assert exit.code in (0, None), f"python -m {module} {' '.join(args)} exited with {exit.code}"
    return capsys.readouterr().out


def assert_summary_names_outputs(output: str, workdir: Path) -> None:
    """Every output in the workdir is named, a numbered one (predictions_STEP.jsonl) by its latest step."""
    assert "Trained steps" in output or "Nothing to train" in output
    for path in workdir.iterdir():
        numbered = re.fullmatch(r"(.*_)\d+(\.\w+)", path.name)
        name = re.escape(numbered[1]) + r"\d+" + re.escape(numbered[2]) if numbered else re.escape(path.name)
        assert re.search(re.escape(f"{workdir}/") + name, output), f"{path.name} is not in the summary:\n{output}"


@pytest.fixture(scope="module")
def persistent_compilation_cache(tmp_path_factory):
    """The commands compile the same programs again and again: XLA's persistent cache compiles each once."""
    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
                "jax_persistent_cache_min_compile_time_secs": 0, "jax_persistent_cache_min_entry_size_bytes": 0}
    saved = {name: getattr(jax.config, name) for name in settings}
    compilation_cache.reset_cache()  # the cache decides at its first use whether it is on
    for name, value in settings.items():
        jax.config.update(name, value)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# Every document's commands in CI; by default the README's and one config's (the others take 10-20 s each).
@pytest.mark.parametrize("source", helpers.slow_but(("README.md", "configs/t5_reverse.py"), sorted(TEXTS)))
def test_shown_commands_run(source, tmp_path, monkeypatch, capsys, persistent_compilation_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    flags_by_workdir: dict[str, list[str]] = {}
    for command in dict.fromkeys(commands_in(TEXTS[source])):
        if command in NOT_RUN:
            continue
        argv = shlex.split(command)
        assert argv[:2] == ["python", "-m"], f"{source}: {command!r} is not `python -m ...` and not in NOT_RUN"
        module, args = argv[2], argv[3:]
        assert has_main(module), f"{source}: {command!r}: `python -m {module}` runs nothing"
        if not args:
            continue  # a tool named in prose
        if "--help" in args:
            run_module(module, args, monkeypatch, capsys)
            continue
        args = resolve_brackets(args, flags_by_workdir)
        if option(args, "--workdir"):
            flags_by_workdir[option(args, "--workdir")] = [arg for arg in args if arg.startswith("--config.")]
        args = tiny_args(module, args)
        make_inputs(module, args)
        output = run_module(module, args, monkeypatch, capsys)
        if module == "train":
            assert_summary_names_outputs(output, Path(option(args, "--workdir")))
        if module == "convert":
            assert f"wrote {args[2]}" in output and Path(args[2], "config.json").is_file()


def test_every_not_run_entry_is_still_shown():
    shown = {command for text in TEXTS.values() for command in commands_in(text)}
    assert not NOT_RUN.keys() - shown, f"no longer in the texts, remove from NOT_RUN: {NOT_RUN.keys() - shown}"


# ---------------------------------------------------------------------------------------------------------------
# The end-of-run summary


def test_summary_names_metrics_steps_and_outputs(tmp_path):
    for name in ("checkpoints", "tensorboard", "export"):
        (tmp_path / name).mkdir()
    for name in ("metrics.jsonl", "predictions_100.jsonl", "predictions_200.jsonl", "predictions.tsv"):
        (tmp_path / name).write_text("")
    metrics = {"loss": 1.25, "grad_norm": 0.5, "learning_rate": 1e-3, "eval_loss": 1.5, "eval_accuracy": 0.25}
    summary = trainer.run_summary(tmp_path, metrics, {"accuracy": 0.5}, first_step=100, num_steps=200, seconds=75,
                                  last_checkpoint=200, export_dir=str(tmp_path / "export"))
    lines = summary.splitlines()
    assert lines[:4] == ["Trained steps 101-200 (resumed from step 100) in 1m15s.", "  train: loss 1.25",
                         "  eval: loss 1.5, accuracy 0.25", "  after training: accuracy 0.5"]
    assert lines[4:] == ["Outputs:", f"  {tmp_path}/checkpoints/  (latest: step 200)", f"  {tmp_path}/metrics.jsonl",
                         f"  {tmp_path}/tensorboard/", f"  {tmp_path}/predictions.tsv",
                         f"  {tmp_path}/predictions_200.jsonl", f"  {tmp_path}/export/  (the final model)"]
    resumed_at_the_end = trainer.run_summary(tmp_path, {}, None, first_step=200, num_steps=200, seconds=3,
                                             last_checkpoint=200, export_dir="")
    assert resumed_at_the_end.splitlines()[0] == (
        "Nothing to train: the checkpoint of step 200 ends the run (200 steps).")

"""FLIPPED's input format, template split, wrong-label draw, training mixture, bad input, the evaluation command and
the model card's usage example, on a tiny T5 and a tiny T5 tokenizer (sentinels included) built here."""
import collections
import json
import re

import numpy as np
import pytest
import torch
import transformers

from flipped_jax import FlippedModel, evaluate, score_options
from flipped_jax import data as flipped_data
from flipped_jax.templates import Template, load_templates
from jaxport.data import ByteTokenizer, HuggingFaceTokenizer
from tests import helpers

WORDS = ("input output this is the best cast iron skillet you will ever buy positive negative review is it good or "
         "bad yes no maybe title a cat sat on mat does follow that").split()
T5_KWARGS = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
CARD_EXAMPLE = "input: <extra_id_0> this is the best cast iron skillet you will ever buy<extra_id_1>\noutput: Positive"
RTE = Template("can we infer", 'Suppose {{premise}} Can we infer that "{{hypothesis}}"? Yes, no, or maybe? ||| '
               "{% if label != -1 %}{{ answer_choices[label] }}{% endif %}", "Yes ||| Maybe ||| No", ("Accuracy",))
AMAZON = Template("Is_this_review", "Title: {{title}}\nReview: {{content}}\nIs the review positive or negative? |||\n"
                  "{{answer_choices[label]}}", "Negative ||| Positive", ("Accuracy",))
COPA = Template("exercise", '{% if question == "effect" %}{{premise}} What happened as a result?{% else %}{{premise}} '
                "What was the cause?{% endif %} Options: {{answer_choices | join(', ')}} ||| "
                "{{ answer_choices[label] }}", "{{choice1}} ||| {{choice2}}", ("Accuracy",))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random transformers T5 with a T5 tokenizer (word pieces, 8 sentinels) beside it."""
    folder = tmp_path_factory.mktemp("flipped_data") / "model"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0 - i / 100) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz:.?,\"'PNYMT"]
    tokenizer = transformers.T5Tokenizer(vocab=vocab, extra_ids=8)
    assert len(tokenizer) <= T5_KWARGS["vocab_size"]
    helpers.random_torch_t5(seed=0, **T5_KWARGS).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(folder):
    return HuggingFaceTokenizer(transformers.AutoTokenizer.from_pretrained(folder))


# ---------------------------------------------------------------------------------------------------------------
# The authors' split (their promptsource fork's Template.my_apply_instruct_helper and dict_to_string), restated


def authors_split(jinja: str) -> tuple[str, str]:
    input_string, output_string = jinja.split("|||")
    instruct, result, flag = {}, "", 0
    for index, match in enumerate(re.finditer(r"^[^\}\{]+\{|\}[^\}\{]+\{|\}[^\}\{]+$", input_string)):
        start, end = match.span()
        start += input_string[start] == "}"
        end -= input_string[end - 1] == "{"
        result += input_string[flag:start] + f"<extra_id_{index}>"
        instruct[f"<extra_id_{index}>"] = input_string[start:end]
        flag = end
    result += input_string[flag:]
    return f"{result}|||{output_string}", "".join(f"{key} {value}" for key, value in instruct.items())


@pytest.mark.parametrize("template", [RTE, AMAZON, COPA], ids=lambda t: t.name)
def test_template_split_is_the_authors(template):
    assert template.split_instruction() == authors_split(template.jinja)


def test_flipped_example_and_input_format():
    example = AMAZON.flipped({"title": "Great", "content": "this is the best cast iron skillet you will ever buy",
                              "label": 1})
    assert example == {"input": "<extra_id_0>Great<extra_id_1>this is the best cast iron skillet you will ever buy"
                                "<extra_id_2>", "label": "Positive", "options": ["Negative", "Positive"],
                       "instruction": "<extra_id_0> Title: <extra_id_1> \nReview: <extra_id_2> \nIs the review "
                                      "positive or negative? "}
    assert flipped_data.flipped_input(example["input"], "Positive") == f"input: {example['input']}\n output: Positive"
    copa = COPA.flipped({"premise": "The cat sat.", "question": "cause", "choice1": "It was tired.",
                         "choice2": "It ran.", "label": 0})
    assert copa["options"] == ["It was tired.", "It ran."] and copa["label"] == "It was tired."
    assert copa["input"].startswith("The cat sat.<extra_id_") and "It was tired., It ran." in copa["input"]


def test_promptsource_yaml_loads(tmp_path):
    (tmp_path / "templates.yaml").write_text(
        "dataset: super_glue\nsubset: rte\ntemplates:\n"
        "  a1: !Template\n    answer_choices: Yes ||| No\n    id: a1\n"
        "    jinja: '{{premise}} Is it true that \"{{hypothesis}}\"? ||| {{ answer_choices[label] }}'\n"
        "    metadata: !TemplateMetadata\n      choices_in_prompt: true\n      metrics:\n      - Accuracy\n"
        "      original_task: true\n    name: is it true\n    reference: ''\n"
        "  b2: !Template\n    id: b2\n    jinja: '{{premise}} ||| {{hypothesis}}'\n"
        "    metadata: !TemplateMetadata\n      metrics:\n      - BLEU\n    name: generate\n    reference: ''\n")
    templates = load_templates(tmp_path)
    assert [t.name for t in templates] == ["is it true"]
    assert templates[0].apply({"premise": "A.", "hypothesis": "B", "label": 1}) == ("A. Is it true that \"B\"?",
                                                                                     "No")
    assert len(load_templates(tmp_path, classification_only=False)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Training examples


def example(label="Maybe", where="rte.jsonl, line 3"):
    return {"input": "a cat sat<extra_id_0>a cat<extra_id_1>", "label": label, "options": ["Yes", "Maybe", "No"],
            "instruction": "<extra_id_0> Can we infer<extra_id_1> ?", "where": where, "draw": 5}


def test_wrong_label_is_drawn_uniformly_among_the_others():
    rng = np.random.default_rng(0)
    counts = collections.Counter(flipped_data.wrong_index(4, 2, rng) for _ in range(4000))
    assert set(counts) == {0, 1, 3} and all(abs(n / 4000 - 1 / 3) < 0.03 for n in counts.values())


def test_train_arrays_hold_gold_then_wrong_input_and_the_instruction(tokenizer):
    encoder = flipped_data.Encoder(tokenizer, 40, 24)
    arrays = flipped_data.TrainPreprocessor(encoder, decoder_start_token_id=0, seed=1)(example())
    tok = tokenizer.tokenizer
    decoded = [tok.decode(ids[mask > 0]) for ids, mask in zip(arrays["input_ids"], arrays["attention_mask"],
                                                              strict=True)]
    wrong = flipped_data.wrong_index(3, 1, np.random.default_rng([1, 5]))
    assert decoded[0] == tok.decode(tok(flipped_data.flipped_input(example()["input"], "Maybe"))["input_ids"])
    assert decoded[1] == tok.decode(tok(flipped_data.flipped_input(example()["input"],
                                                                   ["Yes", "Maybe", "No"][wrong]))["input_ids"])
    instruction = tok(example()["instruction"])["input_ids"]
    assert arrays["labels"][:len(instruction)].tolist() == instruction and instruction[-1] == tok.eos_token_id
    assert arrays["decoder_input_ids"].tolist() == [0, *arrays["labels"][:-1].tolist()]


def test_mixture_samples_in_proportion_to_capped_sizes():
    datasets = [flipped_data.MixtureDataset(name, [example(where=f"{name} {i}") for i in range(size)])
                for name, size in (("small", 100), ("large", 5000), ("huge", 20000))]
    mixture = flipped_data.Mixture(datasets, cap=1000, seed=0)
    drawn = collections.Counter(mixture[i]["dataset"] for i in range(6000))
    assert all(abs(drawn[name] / 6000 - share) < 0.03 for name, share in (("small", 100 / 2100),
                                                                           ("large", 1000 / 2100),
                                                                           ("huge", 1000 / 2100)))
    assert mixture[17] == mixture[17] and mixture[17]["draw"] == 17  # any example rebuilt from its index
    kept = {mixture[i]["where"] for i in range(6000) if mixture[i]["dataset"] == "huge"}
    assert len(kept) <= 1000  # the capped subset only


def test_mixture_renders_a_random_template_per_draw():
    raw = [{"premise": f"p{i}", "hypothesis": "h", "label": i % 3} for i in range(50)]
    other = Template("other", "{{premise}} so {{hypothesis}}? ||| {{ answer_choices[label] }}", "Yes ||| Maybe ||| No")
    mixture = flipped_data.Mixture([flipped_data.MixtureDataset("rte", raw, (RTE, other))], seed=0)
    instructions = collections.Counter(mixture[i]["instruction"] for i in range(400))
    assert set(instructions) == {RTE.split_instruction()[1], other.split_instruction()[1]}
    assert min(instructions.values()) > 150


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_label_not_among_options_names_the_example(tokenizer, tmp_path):
    encoder = flipped_data.Encoder(tokenizer, 40, 24)
    with pytest.raises(ValueError, match=r"rte.jsonl, line 3: label 'Perhaps' is not one of its options"):
        flipped_data.TrainPreprocessor(encoder)(example("Perhaps"))
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(example()) + "\n" + json.dumps({**example("Perhaps"), "where": None}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: label 'Perhaps'"):
        evaluate.accuracies(None, evaluate.jsonl_rows(str(path)), tokenizer, max_input_length=40,
                            max_target_length=24)


def test_instruction_longer_than_the_target_length_is_an_error_unless_truncating(tokenizer):
    with pytest.raises(ValueError, match=r"rte.jsonl, line 3: its instruction is \d+ tokens long, more than the "
                                         r"limit of 4 \(raise the limit or set truncate\)"):
        flipped_data.TrainPreprocessor(flipped_data.Encoder(tokenizer, 40, 4))(example())
    arrays = flipped_data.TrainPreprocessor(flipped_data.Encoder(tokenizer, 40, 4, truncate=True))(example())
    assert arrays["decoder_attention_mask"].sum() == 4 and arrays["labels"][3] == tokenizer.eos_id


def test_a_checkpoint_that_is_not_t5_is_refused_naming_its_keys(tmp_path):
    torch.manual_seed(0)
    bart = transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=32))
    bart.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)missing.*shared/embedding: from shared\.weight.*unexpected.*"
                                         r"model\.encoder\.layers\.0\.self_attn\.k_proj\.weight"):
        FlippedModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation command and the card's example


def test_evaluate_reports_accuracy_per_dataset(folder, tokenizer, tmp_path):
    rows = [{"input": f"a cat sat on mat {i}", "label": ["yes", "no", "maybe"][i % 3],
             "options": ["yes", "no", "maybe"][:2 + (i % 2)] if i % 3 < 2 else ["yes", "no", "maybe"],
             "instruction": "<extra_id_0> does it follow that<extra_id_1> ?", "dataset": "rte" if i < 5 else "cb"}
            for i in range(9)]
    rows[4]["instruction"] = ["<extra_id_0> is it good", "<extra_id_0> is it bad"]  # one per option
    rows[4]["options"], rows[4]["label"] = ["yes", "no"], "no"
    data_file = tmp_path / "eval.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = evaluate.main(["--model", str(folder), "--data", str(data_file), "--max-input-length", "32",
                            "--max-target-length", "16", "--batch-size", "4", "--output", str(tmp_path / "acc.json")])
    assert list(scores) == ["rte", "cb"] and json.loads((tmp_path / "acc.json").read_text()) == scores
    model = FlippedModel.from_pretrained(folder)  # the same accuracies, example by example through score_options
    encoder = flipped_data.Encoder(tokenizer, 32, 16)
    hits = collections.defaultdict(list)
    for row in rows:
        arrays = flipped_data.OptionsPreprocessor(encoder, 3)(row)
        _, prediction = score_options(model, arrays["input_ids"][None], arrays["attention_mask"][None],
                                      arrays["instruction_ids"][None], arrays["instruction_mask"][None],
                                      arrays["option_mask"][None])
        hits[row["dataset"]].append(int(prediction[0]) == row["options"].index(row["label"]))
    assert scores == {name: float(np.mean(values)) for name, values in hits.items()}


def test_the_cards_usage_example_generates_as_transformers(folder):
    """generate of the instruction for the card's input: token-identical to transformers' greedy generate."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(CARD_EXAMPLE, return_tensors="np")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") in ids[0]
    ours = FlippedModel.from_pretrained(folder).generate(ids, max_new_tokens=12).sequences
    reference = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(ids), max_new_tokens=12, do_sample=False, num_beams=1).numpy()
    ours = np.asarray(ours)  # padded with pad_token_id past the end, where transformers stops
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == 0).all()


def test_bytes_spell_the_sentinels_out():
    """The tiny config's byte tokenizer reads a sentinel as its 12 characters (documented in the config)."""
    assert len(ByteTokenizer().encode("<extra_id_0>")) == 13

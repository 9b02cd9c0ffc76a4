"""Prompt templates in promptsource's format, and FLIPPED's split of a template into input and instruction.

A template is Jinja: `input part ||| target part`, with `answer_choices` (Jinja too, options joined by `|||`).
promptsource's templates.yaml files (`!Template` entries) load with `load_templates`; promptsource itself is not
needed. Rendering is promptsource's: every `{{ ... }}` truncated to 2048 characters, both parts stripped.

FLIPPED's split (the authors' promptsource fork, `Template.my_apply_instruct_helper` and `dict_to_string`): every
literal chunk of the input part (text between two Jinja tags, or before the first, or after the last) is replaced
by a T5 sentinel `<extra_id_i>`, in order; the rendered result is the input, and the instruction is the chunks
after their sentinels: `<extra_id_0> {chunk 0}<extra_id_1> {chunk 1}...`, each chunk as written in the template
(its spaces and newlines kept).
"""
import dataclasses
import random
import re
from pathlib import Path

import jinja2
import yaml

TEXT_VAR_LENGTH = 2048  # promptsource's cut of every substituted value
SEPARATOR = "|||"
# A literal chunk: from the start to the first tag, between a closing and an opening brace, or after the last tag.
LITERAL_CHUNK = re.compile(r"^[^{}]+\{|\}[^{}]+\{|\}[^{}]+$")
PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"  # promptsource's stand-in for `|||` inside example values

_ENV = jinja2.Environment(loader=jinja2.BaseLoader)
_ENV.globals.update(zip=zip)
_ENV.filters["choice"] = random.choice  # as promptsource: a few templates draw a random choice


def sentinel(index: int) -> str:
    return f"<extra_id_{index}>"


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    jinja: str
    answer_choices: str | None = None  # Jinja of the options joined by |||; None: not a classification template
    metrics: tuple[str, ...] = ()

    def apply(self, example: dict) -> tuple[str, str]:
        """(input, target) as promptsource renders them."""
        return self._render(self.jinja, example)

    def options(self, example: dict) -> list[str] | None:
        """The example's answer choices, or None when the template has none."""
        if self.answer_choices is None:
            return None
        rendered = _ENV.from_string(self.answer_choices).render(**_protected(example))
        return [_unprotected(choice.strip()) for choice in rendered.split(SEPARATOR)]

    def split_instruction(self) -> tuple[str, str]:
        """(the template's Jinja with its input part's literal chunks replaced by sentinels, the instruction)."""
        input_part, target_part = self.jinja.split(SEPARATOR, 1)
        pieces, chunks, end = [], [], 0
        for match in LITERAL_CHUNK.finditer(input_part):
            start, stop = match.span()
            start += input_part[start] == "}"
            stop -= input_part[stop - 1] == "{"
            pieces += [input_part[end:start], sentinel(len(chunks))]
            chunks.append(input_part[start:stop])
            end = stop
        pieces.append(input_part[end:])
        instruction = "".join(f"{sentinel(i)} {chunk}" for i, chunk in enumerate(chunks))
        return "".join(pieces) + SEPARATOR + target_part, instruction

    def flipped(self, example: dict) -> dict:
        """The example as FLIPPED reads it: {input (with sentinels), label (the gold target), options, instruction}."""
        jinja, instruction = self.split_instruction()
        input_text, label = self._render(jinja, example)
        return {"input": input_text, "label": label, "options": self.options(example), "instruction": instruction}

    def _render(self, jinja: str, example: dict) -> tuple[str, str]:
        jinja = jinja.replace("}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}")
        values = _protected(example)
        if "answer_choices" in values:
            raise ValueError(f"template {self.name!r}: the example has a field 'answer_choices', a name templates "
                             "reserve")
        values["answer_choices"] = self.options(example)
        parts = _ENV.from_string(jinja).render(**values).split(SEPARATOR)
        if len(parts) != 2:
            raise ValueError(f"template {self.name!r} renders {len(parts)} parts, expected input ||| target")
        input_text, target = (_unprotected(part).strip() for part in parts)
        return input_text, target


def _protected(example: dict) -> dict:
    return {k: v.replace(SEPARATOR, PIPE_PROTECTOR) if isinstance(v, str) else v for k, v in example.items()}


def _unprotected(text: str) -> str:
    return text.replace(PIPE_PROTECTOR, SEPARATOR)


class _TemplateLoader(yaml.SafeLoader):
    """Reads promptsource's `!Template` and `!TemplateMetadata` tags as plain mappings."""


for _tag in ("!Template", "!TemplateMetadata"):
    _TemplateLoader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node, deep=True))


def load_templates(path: str | Path, classification_only: bool = True) -> list[Template]:
    """The templates of a promptsource templates.yaml file (or of the templates.yaml in a folder). With
    `classification_only`, those that score by accuracy and have answer choices, as the authors train on
    (`required_classification`)."""
    path = Path(path)
    path = path / "templates.yaml" if path.is_dir() else path
    entries = yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)["templates"].values()
    templates = [Template(entry["name"], entry["jinja"], entry.get("answer_choices"),
                          tuple((entry.get("metadata") or {}).get("metrics") or ())) for entry in entries]
    if classification_only:
        templates = [t for t in templates if "Accuracy" in t.metrics and t.answer_choices is not None]
    if not templates:
        raise ValueError(f"{path}: no {'classification ' if classification_only else ''}templates")
    return templates

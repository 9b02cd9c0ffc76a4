"""Tiny classification datasets made on the fly, with promptsource-style templates: the default training config's
mixture (no download), so the whole FLIPPED pipeline (template split, gold and wrong labels, unlikelihood, option
scoring) runs on a CPU in a minute. Example i of a dataset comes from a generator seeded by (seed, i)."""
import dataclasses

import numpy as np

from flipped_jax.templates import Template

WORDS = {
    "good": "great lovely superb fine happy best wonderful".split(),
    "bad": "awful poor broken sad worst terrible dull".split(),
    "animal": "cat dog horse mouse lion tiger bear".split(),
    "fruit": "apple pear plum lime grape melon peach".split(),
}
TASKS = {
    # name: (the word lists of label 0 and label 1, templates)
    "sentiment": (("bad", "good"), (
        Template("is_it_positive", "Review: {{text}}\nIs this review positive or negative? ||| "
                 "{{answer_choices[label]}}", "negative ||| positive", ("Accuracy",)),
        Template("did_they_like_it", "{{text}} Did the writer like it? ||| {{answer_choices[label]}}", "no ||| yes",
                 ("Accuracy",)),
    )),
    "topic": (("animal", "fruit"), (
        Template("which_topic", "Text: {{text}}\nTopic: animals or fruit? ||| {{answer_choices[label]}}",
                 "animals ||| fruit", ("Accuracy",)),
        Template("is_it_food", "Can you eat what this lists? {{text}} ||| {{answer_choices[label]}}", "no ||| yes",
                 ("Accuracy",)),
    )),
}


@dataclasses.dataclass(frozen=True)
class SyntheticClassification:
    """`size` examples {text, label}: 2 to 5 words, mostly from the label's list, one from the other list at times."""

    task: str
    size: int = 2000
    seed: int = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        lists, _ = TASKS[self.task]
        label = int(rng.integers(2))
        words = list(rng.choice(WORDS[lists[label]], size=int(rng.integers(2, 6))))
        if rng.random() < 0.3:
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(WORDS[lists[1 - label]])))
        return {"text": " ".join(words), "label": label}


def templates(task: str) -> tuple[Template, ...]:
    return TASKS[task][1]

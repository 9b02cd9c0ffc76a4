"""T5's training task: the shared seq2seq task over T5ForConditionalGeneration."""
from jaxport.tasks import Seq2SeqTask
from t5_jax.configuration import T5Config
from t5_jax.modeling import T5ForConditionalGeneration


def get_task(config) -> Seq2SeqTask:
    return Seq2SeqTask(config, T5ForConditionalGeneration, T5Config)

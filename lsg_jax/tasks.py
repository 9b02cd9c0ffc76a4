"""LSG-BART's training task: the shared seq2seq task over LSGBartForConditionalGeneration."""
from jaxport.tasks import Seq2SeqTask
from lsg_jax.configuration import LSGBartConfig
from lsg_jax.modeling import LSGBartForConditionalGeneration


def get_task(config) -> Seq2SeqTask:
    return Seq2SeqTask(config, LSGBartForConditionalGeneration, LSGBartConfig)

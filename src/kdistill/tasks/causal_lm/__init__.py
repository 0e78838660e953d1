"""Causal language models (``task: causal_lm``): plain text packed into blocks, prompt/completion
pairs or chat conversations, an ``AutoModelForCausalLM`` teacher (a folder, a hub name or a GGUF
file) and student, token-level losses computed in chunks, perplexity, next-token agreement and
generation speed."""

from kdistill.tasks import register_task
from kdistill.tasks.causal_lm.task import CausalLM

__all__ = ["CausalLM"]

register_task(CausalLM)

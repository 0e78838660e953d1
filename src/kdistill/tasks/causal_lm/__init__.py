"""Causal language models (``task: causal_lm``): text, prompt/completion or chat data, read and
tokenised into packed blocks or masked examples for token-level distillation."""

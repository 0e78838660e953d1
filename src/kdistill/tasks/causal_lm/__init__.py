"""Causal language models (``task: causal_lm``): plain text packed into blocks, prompt/completion
pairs or chat conversations, an ``AutoModelForCausalLM`` teacher (a folder, a hub name or a GGUF
file) and student, token-level losses computed in chunks, perplexity, next-token agreement and
generation speed. The task registers itself when :mod:`.task` is imported
(:func:`kdistill.tasks.get_task` does so the first time a config names it)."""

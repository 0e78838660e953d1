"""Causal language models: a decoder distilled into a smaller one, token by token."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill.data.datasets import PaddingCollator, TokenizedDataset
from kdistill.errors import ConfigError, ModelLoadError
from kdistill.losses import Objective
from kdistill.losses.token_terms import TokenCE, TokenKD
from kdistill.models.preflight import (
    check_generated_length,
    check_max_length,
    check_token_ids,
    fit_generation,
    usable_positions,
)
from kdistill.tasks import register_task
from kdistill.tasks.base import Models, Task, TaskData
from kdistill.tasks.causal_lm.config import LMDataConfig, LMEvaluationOptions, LMObjectiveOptions
from kdistill.tasks.causal_lm.data import prepare_splits, tokenize_documents
from kdistill.tasks.causal_lm.drafting import draft_lines, draft_measurement, probe_prompts, why_no_draft
from kdistill.tasks.causal_lm.evaluation import generate, generation_speed, language_model_metrics
from kdistill.tasks.causal_lm.models import LMModelOptions, load_causal_lm, load_lm_tokenizer, student_lm
from kdistill.tasks.causal_lm.reading import read_documents
from kdistill.tasks.causal_lm.sequence_kd import longest_prompt, sequence_kd_data
from kdistill.tasks.causal_lm.vocab import check_tokenizers, shared_vocab_size
from kdistill.train.on_policy import OnPolicy

__all__ = ["CausalLM"]

#: tokens of a test example that prompt the sample continuations of the report, and tokens generated;
#: tokens generated per timed round of the speed measurement (all shortened to fit the models' positions)
SAMPLE_PROMPT, SAMPLE_TOKENS, SPEED_TOKENS = 48, 40, 32


class CausalLM(Task):
    """Next-token prediction with ``AutoModelForCausalLM`` (Llama/SmolLM2, Qwen2, Mistral, GPT-2 ...)."""

    name = "causal_lm"
    data_section = LMDataConfig
    teacher_options = LMModelOptions
    objective_options = LMObjectiveOptions
    evaluation_options = LMEvaluationOptions
    primary_metric = "perplexity"
    higher_is_better = False
    metric_columns = (("perplexity", "perplexity"), ("agreement", "next-token agreement"))
    speed_note = (
        "Latency is the median CPU time per generated token (greedy decoding of {new_tokens} tokens with "
        "the KV cache after a prompt of {length} tokens, batch {batch}, {threads})"
    )
    throughput_unit = "tokens/s"

    def read(self, data: LMDataConfig) -> LMDataConfig:
        # the texts are tokenised once the tokenizer is loaded (prepare); reading them alone would
        # read them twice, so this step only checks that the training file is there
        if not Path(data.train).is_file():
            read_documents(data.train, data)  # raises the one-line DataError of a missing file
        return data

    def load_models(self, teacher: Any, student: Any | None, raw: Any, *, seed: int) -> Models:
        location = teacher.location()
        loaded = load_causal_lm(
            location,
            "teacher",
            gguf_file=teacher.gguf_file,
            revision=teacher.revision,
            trust_remote_code=teacher.trust_remote_code,
        )
        tokenizer = load_lm_tokenizer(
            teacher.tokenizer or location,
            "teacher",
            gguf_file=teacher.gguf_file,
            revision=teacher.revision,
            trust_remote_code=teacher.trust_remote_code,
        )
        built, note, student_tokenizer = None, "", tokenizer
        if student is not None:
            torch.manual_seed(seed)
            built, note, own_tokenizer = student_lm(student, loaded.model)
            if own_tokenizer is not None:
                check_tokenizers(own_tokenizer, tokenizer, _sample_texts(raw))
                student_tokenizer = own_tokenizer
            shared = shared_vocab_size(_rows(built), _rows(loaded.model), tokenizer)
            if shared is not None:
                note += (
                    f"; the heads differ in size ({_rows(built):,} and {_rows(loaded.model):,} rows): compared "
                    f"on the {shared:,} ids both have"
                )
        return Models(
            teacher=loaded.model,
            teacher_location=location,
            student=built,
            tokenizer=student_tokenizer,
            teacher_tokenizer=tokenizer,
            student_note=note,
        )

    def prepare(self, data: LMDataConfig, raw: Any, models: Models, *, progress: bool) -> TaskData:
        readers = _readers(models)
        check_max_length(data.max_length, readers)
        # combine: route: the training records name their teachers (data.teacher_field)
        teachers = list(models.teachers) if data.teacher_field is not None and models.teachers else None
        splits = prepare_splits(data, models.tokenizer, progress=progress, teachers=teachers)
        for split in splits.values():
            for role, model in readers:
                check_token_ids(split.dataset.columns["input_ids"], model, role, f"the {role}'s tokenizer")
        pad = models.tokenizer.pad_token_id
        collate = PaddingCollator(pad_token_id=pad if pad is not None else models.tokenizer.eos_token_id)
        train, validation, test = splits["train"], splits["validation"], splits.get("test")
        sizes = {role: len(split) for role, split in splits.items()}
        sizes.update({f"{role}_tokens": split.tokens for role, split in splits.items()})
        return TaskData(
            train=train.dataset,
            validation=validation.dataset,
            test=test.dataset if test else None,
            distill=train.dataset,
            collate=collate,
            sizes=sizes,
            description=train.describe(),
            details={"train": train.describe(), "target_tokens": train.stats["target_tokens"]},
            routes=train.routes,
        )

    def preset_objective(self, preset: str, temperature: float, alpha: float) -> Objective | None:
        if preset != "hinton":
            raise ConfigError(
                f"objective.preset {preset} is a recipe for encoders; a causal LM distils with "
                "preset: hinton or with terms: (token_kd, token_ce)"
            )
        return Objective(
            {"kd": TokenKD("forward_kl", temperature), "ce": TokenCE()}, weights={"kd": alpha, "ce": 1.0 - alpha}
        )

    def distill_data(self, objective: Any, models: Models, data: TaskData, *, seed: int, progress: bool) -> TaskData:
        settings = getattr(objective, "sequence_kd", None)
        return sequence_kd_data(settings, models, data, seed=seed, progress=progress) if settings else data

    def check_objective(self, objective: Any, models: Models, data: TaskData) -> None:
        """Refuse sequence-level KD or on-policy samples that would run past either model's positions
        (the longest training prompt and the tokens generated after it: the student learns the whole
        sequence and the teacher scores it), and a ``prompt_tokens`` no prompt is cut by."""
        sequence_kd = getattr(objective, "sequence_kd", None)
        on_policy = getattr(objective, "on_policy", None)
        if data.routes is not None:
            _check_routes_kept(sequence_kd, on_policy)
        if (sequence_kd is None and on_policy is None) or models.student is None:
            return
        train = data.train
        assert isinstance(train, TokenizedDataset)
        readers = _readers(models)
        own = None
        if sequence_kd is not None:
            own = longest_prompt(train, sequence_kd.prompt_tokens)
            own_source = _prompt_source(own.cut, "objective.sequence_kd", sequence_kd.prompt_tokens)
            _check_prompt_tokens(sequence_kd, "objective.sequence_kd", own.any_cut)
            check_generated_length(own.tokens, sequence_kd.new_tokens, readers, "objective.sequence_kd", own_source)
        if on_policy is not None:
            # the student continues the prompts of the batches it trains on: the teacher's
            # continuations keep sequence_kd's prompts, the data's examples (keep_data) their own
            sources, cuts = [], False
            if sequence_kd is None or sequence_kd.keep_data:
                found = longest_prompt(train, on_policy.prompt_tokens)
                sources.append(
                    (found.tokens, _prompt_source(found.cut, "objective.on_policy", on_policy.prompt_tokens))
                )
                cuts = found.any_cut
            if own is not None:
                sources.append((own.tokens, f"the prompts of objective.sequence_kd: {own_source}"))
            _check_prompt_tokens(on_policy, "objective.on_policy", cuts)
            longest, source = max(sources, key=lambda pair: pair[0])
            check_generated_length(longest, on_policy.new_tokens, readers, "objective.on_policy", source)

    def on_policy(self, objective: Any, models: Models, *, seed: int) -> OnPolicy | None:
        settings = getattr(objective, "on_policy", None)
        if settings is None:
            return None
        tokenizer = models.tokenizer
        return OnPolicy(
            lmbda=settings.lmbda,
            new_tokens=settings.new_tokens,
            prompt_tokens=settings.prompt_tokens,
            temperature=settings.temperature,
            seed=settings.seed if settings.seed is not None else seed,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    def finetune_objective(self) -> Objective:
        return Objective({"ce": TokenCE()})

    def evaluate(
        self, models: Mapping[str, nn.Module], loader: DataLoader, *, progress: bool, desc: str = "evaluating"
    ) -> dict[str, dict[str, float]]:
        return language_model_metrics(models, loader, progress=progress, desc=desc)

    def measure_speed(self, models: Mapping[str, nn.Module], batch: Any) -> dict[str, dict[str, float]]:
        # a prompt and the timed tokens within the positions of every model
        length, new_tokens = fit_generation(SAMPLE_PROMPT, SPEED_TOKENS, models.values())
        prompt = batch["input_ids"][:1, :length]
        return generation_speed(models, prompt, new_tokens=new_tokens, eos_token_id=_eos(models))

    def extra_measurements(  # type: ignore[override]
        self, models: Mapping[str, nn.Module], batch: Any, options: LMEvaluationOptions | None = None
    ) -> dict[str, dict[str, Any]]:
        """The student as the teacher's draft model (``metrics["student"]["draft"]``,
        :func:`~kdistill.tasks.causal_lm.drafting.draft_measurement`), on prompts of the speed
        measurement's length and as many new tokens; ``{"skipped": reason}`` where it cannot draft
        or ``evaluation.draft_model`` is false."""
        teacher, student = models.get("teacher"), models.get("student")
        if teacher is None or student is None:
            return {}
        length, new_tokens = fit_generation(SAMPLE_PROMPT, SPEED_TOKENS, models.values())
        prompts = probe_prompts(batch, length)
        reason = None if (options or LMEvaluationOptions()).draft_model else "evaluation.draft_model is false"
        reason = reason or why_no_draft(teacher, student) or (None if prompts else "the batch holds no tokens")
        if reason is not None:
            return {"student": {"draft": {"skipped": reason}}}
        record = draft_measurement(teacher, student, prompts, new_tokens=new_tokens, eos_token_id=_eos(models))
        return {"student": {"draft": record}}

    def extra_lines(self, metrics: Mapping[str, Any]) -> list[str]:
        record = metrics.get("student", {}).get("draft")
        return draft_lines(record) if record else []

    def samples(
        self, models: Mapping[str, nn.Module], data: TaskData, tokenizer: Any, count: int = 3
    ) -> list[dict[str, str]]:  # type: ignore[override]
        """Continuations of a few test (or validation) prompts by each model, greedy, side by side."""
        split = data.test if data.test is not None else data.validation
        length, new_tokens = fit_generation(SAMPLE_PROMPT, SAMPLE_TOKENS, models.values())
        found = []
        for index in range(min(count, len(split))):
            prompt = torch.tensor([split[index]["input_ids"][:length]])
            entry = {"prompt": tokenizer.decode(prompt[0])}
            for name, model in models.items():
                entry[name] = tokenizer.decode(generate(model, prompt, new_tokens, tokenizer.eos_token_id)[0])
            found.append(entry)
        return found

    def load_trained(self, location: str, role: str) -> tuple[nn.Module, Any]:
        return load_causal_lm(location, role).model, load_lm_tokenizer(location, role)

    def eval_data(
        self,
        data: LMDataConfig,
        path: str,
        models: Mapping[str, tuple[nn.Module, Any]],
        *,
        max_length: int | None,
        max_examples: int | None,
        progress: bool,
    ) -> TaskData:
        model, tokenizer = models["student"]
        readers = [(name, pair[0]) for name, pair in models.items()]
        # by default the run's length, shortened to what the models read
        length = max_length or min([data.max_length, *(usable_positions(m) or data.max_length for _, m in readers)])
        settings = data.model_copy(update={"max_length": length})
        if "teacher" in models:
            check_tokenizers(tokenizer, models["teacher"][1], [])
        check_max_length(length, readers, "--max-length")
        split = tokenize_documents(read_documents(path, settings, role="data"), tokenizer, settings, progress=progress)
        if max_examples is not None and len(split) > max_examples:
            split = split.subset(range(max_examples), f"{split.source} (first {max_examples})")
        check_token_ids(split.dataset.columns["input_ids"], model, "model", "the model's folder")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        dataset = split.dataset
        return TaskData(
            train=dataset,
            validation=dataset,
            test=dataset,
            distill=dataset,
            collate=PaddingCollator(pad_token_id=pad),
            sizes={"test": len(dataset)},
        )


def _readers(models: Models) -> list[tuple[str, nn.Module]]:
    """Every model that reads the run's tokens, by role (several teachers: each by name)."""
    teachers = [(f"teacher {name}", model) for name, model in models.teachers.items()]
    readers = teachers or [("teacher", models.teacher)]
    return readers + ([("student", models.student)] if models.student is not None else [])


def _check_routes_kept(sequence_kd: Any, on_policy: Any) -> None:
    """Refuse what would lose each training example's teacher under ``combine: route``: sequence-level
    KD trains on continuations one teacher writes (the primary, whatever teacher the example names),
    and on-policy batches are rebuilt from the student's samples without the examples' teachers."""
    if sequence_kd is not None:
        raise ConfigError(
            "objective.sequence_kd trains on continuations written by one teacher (the primary one: "
            "student.from_teacher.teacher, default the first), so the teacher each record names "
            "(data.teacher_field, combine: route) would not be the one that wrote its text: remove "
            "objective.sequence_kd, or combine the teachers another way (mixture, logit_mean, confidence, entropy) "
            "without data.teacher_field"
        )
    if on_policy is not None:
        raise ConfigError(
            "objective.on_policy rebuilds batches from the student's samples, which lose the teacher each record "
            "names (data.teacher_field, combine: route): remove objective.on_policy, or combine the teachers "
            "another way (mixture, logit_mean, confidence, entropy) without data.teacher_field"
        )


def _prompt_source(cut: bool, setting: str, prompt_tokens: int) -> str:
    """What makes the longest prompt that long, with the keys that set it, for a message."""
    if cut:
        return f"a text block's first tokens, {setting}.prompt_tokens {prompt_tokens} at most"
    return "the data's own prompts, shorter than data.max_length"


def _check_prompt_tokens(settings: Any, setting: str, cuts: bool) -> None:
    """Refuse a ``prompt_tokens`` other than its default where no prompt is cut by it (every example has
    a prompt of its own): it would change nothing."""
    default = type(settings).model_fields["prompt_tokens"].default
    if not cuts and settings.prompt_tokens != default:
        raise ConfigError(
            f"{setting}.prompt_tokens {settings.prompt_tokens} has no effect: it cuts the prompt of a text block, "
            "and every example the student trains on has a prompt of its own (prompt/completion or chat data); "
            "remove it"
        )


def _eos(models: Mapping[str, nn.Module]) -> int | None:
    """The end-of-text id generation pads with (the first model's; the tokenizers are the same)."""
    eos = getattr(next(iter(models.values())).config, "eos_token_id", None)
    return eos if isinstance(eos, int) else None


def _rows(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _sample_texts(data: LMDataConfig) -> list[str]:
    """A few thousand characters of the training file, to compare two tokenizers on."""
    try:
        with open(data.train, encoding=data.encoding, errors="replace") as handle:
            return [handle.read(4000)]
    except OSError:
        raise ModelLoadError(f"cannot read {data.train!r} to compare the tokenizers") from None


register_task(CausalLM)

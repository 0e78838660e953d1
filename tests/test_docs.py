"""Every Python example in the README and the docs below runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    "README.md",
    "docs/losses.md",
    "docs/training.md",
    "docs/cache.md",
    "docs/distributed.md",
    "docs/causal_lm.md",
    "docs/vocabulary.md",
]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _runnable_blocks(document: str) -> str:
    """The document's Python blocks joined into one script; blocks that use names defined
    elsewhere (the README's Trainer sketch) are recognised by an undefined `training_args`."""
    blocks = FENCE.findall((ROOT / document).read_text(encoding="utf-8"))
    assert blocks, f"{document} has no Python example"
    return "\n".join(block for block in blocks if "training_args" not in block)


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_examples_run(document, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_runnable_blocks(document), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    if document == "README.md":
        # the quick start really distils: the student ends up agreeing with its teacher
        agreement = float(re.search(r"agreement ([\d.]+)%", result.stdout).group(1))
        assert agreement > 80.0, result.stdout


def test_readme_yaml_example_is_a_valid_config_equal_to_the_example_file():
    import yaml

    from kdistill.app.config_loading import parse_config

    block = _yaml_blocks("README.md")[0]  # the first: the whole config; the others are parts of one
    from_readme = parse_config(yaml.safe_load(block))
    from_file = parse_config(yaml.safe_load((ROOT / "examples" / "sst2_hinton.yaml").read_text(encoding="utf-8")))
    # compared by value: a config parsed before and after a task registers its loss terms has another class
    assert from_readme.model_dump() == from_file.model_dump()


def _yaml_blocks(document: str) -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / document).read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, f"{document} has no YAML example"
    return blocks


@pytest.mark.parametrize("document", ["docs/cache.md", "docs/cli.md", "README.md"])
def test_document_configs_are_valid(document):
    """Each YAML example is a config (or a part of one, completed with a minimal config), and the
    resolved config reads back to itself."""
    import yaml

    from kdistill.app.config import RunConfig
    from kdistill.app.config_loading import dump_config, parse_config

    minimal = {"teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}, "data": {"train": "d.csv"}}
    for block in _yaml_blocks(document):
        raw = yaml.safe_load(block)
        config = parse_config({**minimal, **raw})
        assert isinstance(config, RunConfig)
        assert parse_config(yaml.safe_load(dump_config(config))).model_dump() == config.model_dump()
        for section, values in raw.items():
            for key, value in (values or {}).items() if isinstance(values, dict) else ():
                actual = getattr(getattr(config, section), key) if isinstance(value, (str, int, float, bool)) else None
                if actual is not None and key != "cache" and not (isinstance(value, bool) and isinstance(actual, str)):
                    assert actual == value, (document, section, key)  # YAML's bare `no` is the string "no"


def _schema_keys(model, seen=None):
    """Every key a config can hold, through nested sections (by name)."""
    import typing

    from pydantic import BaseModel

    seen = set() if seen is None else seen
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for arm in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(arm, type) and issubclass(arm, BaseModel) and arm not in seen:
                seen.add(arm)
                keys |= _schema_keys(arm, seen)
    return keys


def test_the_reference_config_of_the_cli_docs_names_every_key():
    """docs/cli.md says it documents every key: each one of the text-classification schema (the
    loss terms' own keys aside) appears in its reference config, set or commented out."""
    from kdistill.app.config import run_config_class

    reference = _yaml_blocks("docs/cli.md")[0]
    keys = _schema_keys(run_config_class("text_classification"))
    missing = sorted(key for key in keys if not re.search(rf"\b{key}:", reference))
    assert not missing, f"docs/cli.md's reference config leaves out {missing}"


def test_the_causal_lm_config_of_the_cli_docs_names_every_key_the_task_adds():
    from kdistill.app.config import run_config_class

    (lm,) = [block for block in _yaml_blocks("docs/cli.md") if "task: causal_lm" in block]
    added = _schema_keys(run_config_class("causal_lm")) - _schema_keys(run_config_class("text_classification"))
    assert added, "the causal_lm task adds keys of its own"
    missing = sorted(key for key in added if not re.search(rf"\b{key}:", lm))
    assert not missing, f"docs/cli.md's causal_lm config leaves out {missing}"


def test_the_causal_lm_guide_config_is_valid_and_matches_the_example_file():
    """docs/causal_lm.md's config is a causal_lm config; examples/shakespeare_kd.yaml runs the same
    objective and student, with the real teacher from its package."""
    import yaml

    from kdistill.app.config_loading import parse_config

    block, *parts = _yaml_blocks("docs/causal_lm.md")
    guide = parse_config(yaml.safe_load(block))
    for part in parts:  # the later blocks are sections of the same config
        assert parse_config({**yaml.safe_load(block), **yaml.safe_load(part)}).task == "causal_lm"
    example = parse_config(yaml.safe_load((ROOT / "examples" / "shakespeare_kd.yaml").read_text(encoding="utf-8")))
    assert guide.task == example.task == "causal_lm"
    assert guide.objective == example.objective and guide.student == example.student
    assert example.teacher.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and example.teacher.finetune is not None

"""Every Python example in the README and the docs below runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/losses.md", "docs/training.md", "docs/cache.md", "docs/distributed.md"]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _runnable_blocks(document: str) -> str:
    """The document's Python blocks joined into one script; blocks that use names defined
    elsewhere (the README's Trainer sketch) are recognised by an undefined `training_args`."""
    blocks = FENCE.findall((ROOT / document).read_text(encoding="utf-8"))
    assert blocks, f"{document} has no Python example"
    return "\n".join(block for block in blocks if "training_args" not in block)


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

    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    from_readme = parse_config(yaml.safe_load(block))
    from_file = parse_config(yaml.safe_load((ROOT / "examples" / "sst2_hinton.yaml").read_text(encoding="utf-8")))
    assert from_readme == from_file


@pytest.mark.parametrize("document", ["docs/cache.md"])
def test_document_configs_are_valid(document):
    import yaml

    from kdistill.app.config_loading import parse_config

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / document).read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, f"{document} has no YAML example"
    for block in blocks:
        parse_config(yaml.safe_load(block))

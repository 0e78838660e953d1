"""Property tests (Hypothesis): whatever YAML config or CSV / JSON-lines file a user writes, kdistill
either takes it or refuses it with one :class:`~kdistill.errors.KdistillError`; never another
exception, never a hang (each example has a deadline), never a changed or deleted file."""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.app.config import RunConfig
from kdistill.app.config_loading import load_config
from kdistill.errors import KdistillError
from kdistill.tasks.text_classification.config import DataConfig
from kdistill.tasks.text_classification.reading import TableSplit, load_splits, load_table

PROPERTY = settings(
    max_examples=int(__import__("os").environ.get("KD_EXAMPLES", "120")),
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# -- configs ---------------------------------------------------------------------------------

SECTION_KEYS = {
    "teacher": ["path", "package", "num_labels", "finetune", "cache", "tokenizer", "trust_remote_code"],
    "student": ["path", "from_teacher", "tokenizer"],
    "data": [
        "train",
        "validation",
        "test",
        "format",
        "encoding",
        "text_column",
        "label_column",
        "max_length",
        "validation_fraction",
        "test_fraction",
        "split_seed",
        "augment",
        "hub",
    ],
    "objective": ["preset", "temperature", "alpha", "terms", "tinybert", "minilm"],
    "training": [
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "precision",
        "max_steps",
        "warmup_ratio",
        "max_grad_norm",
        "gradient_accumulation_steps",
        "on_nonfinite",
    ],
    "output": ["dir", "save_checkpoints", "save_every", "keep_checkpoints", "save_best"],
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
    st.sampled_from(
        ["hinton", "tinybert", "kd", "ce", "uniform", "fp16", "utf-8", "base64", "nope", "runs/x", "data.csv"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
section = st.sampled_from(sorted(SECTION_KEYS)).flatmap(
    lambda name: st.tuples(
        st.just(name), st.dictionaries(st.sampled_from(SECTION_KEYS[name] + ["typo"]), values, max_size=5)
    )
)
configs = st.lists(section, max_size=6).map(dict)


@PROPERTY
@given(config=configs)
def test_any_config_mapping_loads_or_is_one_config_error(tmp_path: Path, config: dict) -> None:
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    try:
        assert isinstance(load_config(file), RunConfig)
    except KdistillError as error:
        assert "\n" not in str(error) and str(error)


@PROPERTY
@given(text=st.text(max_size=300))
def test_any_text_as_a_config_file_loads_or_is_one_config_error(tmp_path: Path, text: str) -> None:
    file = tmp_path / "run.yaml"
    file.write_text(text, encoding="utf-8")
    try:
        load_config(file)
    except KdistillError as error:
        assert str(error)


@PROPERTY
@given(overrides=st.lists(st.text(string.printable, max_size=30), max_size=4))
def test_any_override_applies_or_is_one_config_error(tmp_path: Path, overrides: list[str]) -> None:
    file = tmp_path / "run.yaml"
    file.write_text(
        "teacher: {path: t}\nstudent: {from_teacher: {num_layers: 1}}\ndata: {train: d.csv}\n", encoding="utf-8"
    )
    try:
        load_config(file, overrides)
    except KdistillError as error:
        assert str(error)


BASE = {
    "teacher": {"path": "t", "finetune": {"epochs": 1}, "cache": {"dir": "c"}},
    "student": {"from_teacher": {"num_layers": 1, "hidden_size": 16, "num_heads": 2}},
    "data": {"train": "d.csv", "augment": {"copies": 2}},
    "objective": {"preset": "tinybert", "tinybert": {"layer_map": "uniform"}},
    "training": {"epochs": 1},
    "output": {"dir": "runs/x"},
}
paths = st.sampled_from(
    [f"{name}.{key}" for name, keys in SECTION_KEYS.items() for key in keys]
    + [
        "student.from_teacher.num_layers",
        "student.from_teacher.layer_map",
        "objective.tinybert.layer_map",
        "objective.tinybert.heads",
        "data.augment.mask_prob",
        "objective.terms.x.type",
        "objective.terms.x.layer_map",
        "teacher.finetune.lr",
    ]
)


@PROPERTY
@given(changes=st.lists(st.tuples(paths, values), min_size=1, max_size=3))
def test_a_valid_config_with_any_values_changed_loads_or_is_one_config_error(tmp_path: Path, changes: list) -> None:
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    overrides = [f"{key}={json.dumps(value)}" for key, value in changes]
    try:
        assert isinstance(load_config(file, overrides), RunConfig)
    except KdistillError as error:
        assert str(error) and "\n" not in str(error)


# -- data files ------------------------------------------------------------------------------

cells = st.one_of(
    st.text(max_size=15), st.sampled_from(["", " ", "pos", "neg", "1", "0", "NA", "null", '"', ",", "a\nb", "\t"])
)
headers = st.lists(st.sampled_from(["text", "label", "text_b", "extra", "Text", ""]), min_size=0, max_size=4)
csv_files = st.tuples(headers, st.lists(st.lists(cells, max_size=5), max_size=8), st.sampled_from([",", "\t"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["text", "label", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
jsonl_lines = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=20)), max_size=8)


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _read(path: Path, fmt: str | None = None) -> None:
    folder = path.parent
    before = _snapshot(folder)
    config = DataConfig(train=str(path), format=fmt)
    try:
        table = load_table(path, config)
        assert isinstance(table, TableSplit)
        assert all(isinstance(text, str) and text.strip() for text in table.texts)
        splits = load_splits(config)
        assert sum(len(split) for split in splits.values()) == len(table)
    except KdistillError as error:
        assert str(error) and "\n" not in str(error).strip()
    assert _snapshot(folder) == before


@PROPERTY
@given(content=csv_files)
def test_any_csv_or_tsv_reads_or_is_one_data_error(tmp_path: Path, content: tuple) -> None:
    import csv
    import io

    header, rows, separator = content
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path / ("data.csv" if separator == "," else "data.tsv")
    path.write_text(out.getvalue(), encoding="utf-8")
    _read(path)


@PROPERTY
@given(lines=jsonl_lines)
def test_any_json_lines_read_or_are_one_data_error(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    _read(path)


@PROPERTY
@given(raw=st.binary(max_size=200), fmt=st.sampled_from(["csv", "tsv", "json", "jsonl"]))
def test_any_bytes_read_or_are_one_data_error(tmp_path: Path, raw: bytes, fmt: str) -> None:
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(raw)
    _read(path, fmt)


@pytest.mark.parametrize("fraction", [1e-9, 0.5, 0.999999])
def test_tiny_and_huge_split_fractions_are_one_error_or_a_split(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(5)), encoding="utf-8")
    try:
        splits = load_splits(DataConfig(train=str(path), validation_fraction=fraction))
        assert len(splits["train"]) >= 1 and len(splits["validation"]) >= 1
    except KdistillError as error:
        assert "too few" in str(error)

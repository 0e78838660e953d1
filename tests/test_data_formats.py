"""A user's own data described in the config alone: header-less CSV/TSV (data.columns), texts
joined from several columns, fastText and other line files (data.line_pattern), compressed files,
split sizes as counts, and a header that reads like data."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from cli_helpers import one_line, run_command, write_run_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.config_loading import parse_config
from kdistill.errors import ConfigError, DataError
from kdistill.tasks.text_classification.config import DataConfig
from kdistill.tasks.text_classification.reading import load_splits, load_table, split_table

ROOT = Path(__file__).resolve().parents[1]

# an AG News-like file: label, title, description, and no header row
AG_ROWS = [
    (
        "3",
        "Fears for T N pension after talks",
        "Unions representing workers at Turner Newall say they are 'disappointed'",
    ),
    ("4", "The Race is On: Second Private Team Sets Launch Date", "SPACE.com - TORONTO, Canada -- A second team"),
    ("2", "Wall St. Bears Claw Back Into the Black", "Reuters - Short-sellers, Wall Street's dwindling band"),
]
AG_COLUMNS = ["label", "title", "description"]

TREC_LINES = [
    "DESC:manner How did serfdom develop in and then leave Russia ?",
    "ENTY:cremat What films featured the character Popeye Doyle ?",
    "HUM:ind What Français wrote the novel « Le Père Goriot » ?",
]


def data_config(**values: object) -> DataConfig:
    return DataConfig(**{"train": "unused.csv", **values})


def write_headerless(path: Path, rows: list[tuple[str, ...]], delimiter: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def problem(overrides: dict[str, object]) -> str:
    minimal = {"teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}}
    with pytest.raises(ConfigError) as caught:
        parse_config({**minimal, "data": {"train": "d.csv", **overrides}})
    return str(caught.value)


# -- 1. header-less CSV and TSV --------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_columns_name_a_file_without_a_header_whose_first_row_is_data(
    tmp_path: Path, suffix: str, delimiter: str
) -> None:
    path = write_headerless(tmp_path / f"train.{suffix}", AG_ROWS, delimiter)
    table = load_table(path, data_config(columns=AG_COLUMNS, text_column="title"))
    assert table.texts == [title for _, title, _ in AG_ROWS]  # the first row is an example, not a header
    assert table.labels == [3, 4, 2]


def test_a_wrong_number_of_columns_says_how_many_the_file_has(tmp_path: Path) -> None:
    path = write_headerless(tmp_path / "train.csv", AG_ROWS)
    with pytest.raises(DataError, match=r"has 3 column\(s\) but data.columns names 2 \(label, text\): give 3 names"):
        load_table(path, data_config(columns=["label", "text"]))


def test_columns_on_a_file_that_has_a_header_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", sentences(4))
    with pytest.raises(DataError, match="starts with a header row .* remove data.columns"):
        load_table(path, data_config(columns=["text", "label"]))


def test_columns_go_with_csv_and_tsv_only(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="is read as jsonl, whose examples name their own fields: remove data.columns"):
        load_table(path, data_config(columns=["text", "label"]))
    assert "columns: names the columns of a CSV or TSV file" in problem(
        {"columns": ["text", "label"], "format": "json"}
    )
    assert problem({"columns": ["label", "title"]}) == "data: text_column 'text' is not one of columns (label, title)"
    assert problem({"columns": ["text", "text"]}) == "data.columns: names 'text' more than once"


# -- 2. a text joined from several columns ---------------------------------------------------------------


def write_every_format(folder: Path, records: list[dict[str, object]]) -> dict[str, Path]:
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    paths = {kind: folder / f"data.{kind}" for kind in ("csv", "tsv", "json", "jsonl", "parquet")}
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], index=False, sep="\t")
    paths["json"].write_text(json.dumps(records), encoding="utf-8")
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    frame.to_parquet(paths["parquet"])
    return paths


RECORDS = [
    {"title": "Good film", "body": "the plot was fine", "label": "pos"},
    {"title": "Dull", "body": "boring and cold", "label": "neg"},
]


def test_a_text_column_list_is_joined_in_every_format(tmp_path: Path) -> None:
    for kind, path in write_every_format(tmp_path, RECORDS).items():
        table = load_table(path, data_config(text_column=["title", "body"]))
        assert table.texts == ["Good film the plot was fine", "Dull boring and cold"], kind
        joined = load_table(path, data_config(text_column=["title", "body"], text_separator=". "))
        assert joined.texts == ["Good film. the plot was fine", "Dull. boring and cold"], kind
        assert joined.labels == ["pos", "neg"], kind


def test_a_joined_text_leaves_out_an_empty_part_but_not_a_wrong_one(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [{"title": "Good", "body": "", "label": 1}, {"title": "Dull", "body": None, "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert load_table(path, data_config(text_column=["title", "body"])).texts == ["Good", "Dull"]

    path.write_text(json.dumps({"title": "", "body": " ", "label": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 example\(s\) with an empty text \(data row 1\)"):
        load_table(path, data_config(text_column=["title", "body"]))
    path.write_text(json.dumps({"title": "Good", "body": 7, "label": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"the text \(column 'body'\) of data row 1 is a number, not a string"):
        load_table(path, data_config(text_column=["title", "body"]))


def test_a_missing_text_column_names_the_columns_there_are(tmp_path: Path) -> None:
    path = write_every_format(tmp_path, RECORDS)["csv"]
    with pytest.raises(
        DataError, match=r"no column 'summary' \(data.text_column\); its columns are title, body, label$"
    ):
        load_table(path, data_config(text_column=["title", "summary"]))
    assert problem({"text_column": ["title", "label"]}).startswith("data: label_column and text_column name the same")
    assert problem({"text_column": ["a", "a"]}) == "data.text_column: names 'a' more than once"


def test_a_hub_data_set_joins_columns_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def fake_load_dataset(path: str, name: str | None = None, revision: str | None = None) -> datasets.DatasetDict:
        split = datasets.Dataset.from_list(RECORDS * 5)
        return datasets.DatasetDict({"train": split, "validation": split.select(range(2))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(DataConfig(hub={"id": "reviews"}, text_column=["title", "body"], text_separator=" | "))
    assert splits["validation"].texts == ["Good film | the plot was fine", "Dull | boring and cold"]


# -- 3. fastText and other line files ---------------------------------------------------------------------


FASTTEXT = "__label__sports Team wins the cup\n\n__label__tech  New phone out today \r\n__label__2 Markets fall\n"


@pytest.mark.parametrize(("name", "format"), [("train.ft", None), ("train.fasttext", None), ("train.txt", "fasttext")])
def test_fasttext_lines_give_the_label_without_its_prefix(tmp_path: Path, name: str, format: str | None) -> None:
    path = tmp_path / name
    path.write_text(FASTTEXT, encoding="utf-8")
    table = load_table(path, data_config(format=format))
    assert table.labels == ["sports", "tech", 2]  # the blank line is skipped
    assert table.texts == ["Team wins the cup", "New phone out today", "Markets fall"]


def test_a_fasttext_line_with_several_labels_or_none_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.ft"
    path.write_text("__label__a one\n__label__b __label__c two\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 has 2 labels \(b, c\): kdistill distils single-label.*line_pattern"):
        load_table(path, data_config())
    path.write_text("__label__a one\nsports two\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 does not start with a __label__ label: 'sports two'"):
        load_table(path, data_config())


def test_the_first_of_several_fasttext_labels_with_the_pattern_the_message_gives(tmp_path: Path) -> None:
    path = tmp_path / "train.ft"
    path.write_text("__label__b __label__c two words\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_table(path, data_config())
    pattern = re.search(r"data.line_pattern: '(.*)'$", str(caught.value)).group(1)
    table = load_table(path, data_config(line_pattern=pattern))
    assert table.labels == ["b"] and table.texts == ["two words"]


def test_a_line_pattern_reads_trec_questions_in_latin1(tmp_path: Path) -> None:
    path = tmp_path / "train_5500.label"
    path.write_bytes("\n".join(TREC_LINES).encode("latin-1"))
    fine = data_config(line_pattern=r"(?P<label>\S+) (?P<text>.*)", encoding="latin-1")
    table = load_table(path, fine)
    assert table.labels == ["DESC:manner", "ENTY:cremat", "HUM:ind"]
    assert table.texts[2] == "What Français wrote the novel « Le Père Goriot » ?"
    coarse = data_config(line_pattern=r"(?P<label>[A-Z]+):\S+ (?P<text>.*)", encoding="latin-1")
    assert load_table(path, coarse).labels == ["DESC", "ENTY", "HUM"]
    with pytest.raises(DataError, match="not valid utf-8 text"):
        load_table(path, data_config(line_pattern=r"(?P<label>\S+) (?P<text>.*)"))


def test_a_line_that_does_not_match_the_pattern_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("pos fine\npos good\nnothing\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3 does not match data.line_pattern .*: 'nothing'; the pattern must"):
        load_table(path, data_config(line_pattern=r"(?P<label>\S+) (?P<text>.*)"))


def test_line_pattern_mistakes_are_config_errors() -> None:
    assert problem({"line_pattern": "(?P<label>"}).startswith("data.line_pattern: not a valid regular expression")
    assert problem({"line_pattern": r"(\S+) (.*)"}).startswith("data.line_pattern: needs named groups")
    assert problem({"line_pattern": r"(?P<y>\S+) (?P<text>.*)"}) == (
        "data: label_column 'label' is not one of line_pattern's groups (y, text)"
    )
    assert problem({"format": "lines"}).startswith("data: format: lines needs line_pattern:")
    assert problem({"format": "csv", "line_pattern": r"(?P<label>\S+) (?P<text>.*)"}).startswith(
        "data: line_pattern: reads line files"
    )
    assert problem({"format": "fasttext", "text_column": "sentence"}) == (
        "data: text_column 'sentence' is not one of format: fasttext's columns (label, text)"
    )


# -- 4. compressed files ----------------------------------------------------------------------------------


def zipped(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def no_temporary_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any temporary file or folder made while reading fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was made")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_compressed_files_are_read_as_the_file_they_hold(tmp_path: Path, no_temporary_files: None) -> None:
    plain = write_every_format(tmp_path, RECORDS)
    expected = ["Good film", "Dull"]
    for kind, path in plain.items():
        raw = path.read_bytes()
        packed = {
            f"{kind}.gz": gzip.compress(raw),
            f"{kind}.bz2": bz2.compress(raw),
            f"{kind}.xz": lzma.compress(raw),
        }
        for suffix, data in packed.items():
            (tmp_path / f"train.{suffix}").write_bytes(data)
        zipped(tmp_path / f"train.{kind}.zip", {f"inner/train.{kind}": raw, "__MACOSX/._train": b"x"})
        zipped(tmp_path / f"{kind}-bundle.zip", {f"train.{kind}": raw})  # the name inside tells the format
        for name in [*(f"train.{suffix}" for suffix in packed), f"train.{kind}.zip", f"{kind}-bundle.zip"]:
            before = sorted(p.name for p in tmp_path.iterdir())
            table = load_table(tmp_path / name, data_config(text_column="title"))
            assert table.texts == expected, name
            assert sorted(p.name for p in tmp_path.iterdir()) == before
    ft = tmp_path / "train.ft.gz"
    ft.write_bytes(gzip.compress(FASTTEXT.encode("utf-8")))
    assert load_table(ft, data_config()).labels == ["sports", "tech", 2]


def test_a_zip_of_several_files_lists_them_and_broken_archives_are_one_line(tmp_path: Path) -> None:
    several = zipped(tmp_path / "data.zip", {"train.csv": b"text,label\na,1\n", "test.csv": b"text,label\nb,0\n"})
    with pytest.raises(
        DataError, match=r"holds 2 files \(train.csv, test.csv\): kdistill reads a zip that holds exactly"
    ):
        load_table(several, data_config())
    broken = tmp_path / "train.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"^cannot decompress '.*train.csv.gz' as a gz file: "):
        load_table(broken, data_config())
    unknown = tmp_path / "train.gz"
    unknown.write_bytes(gzip.compress(b"text,label\na,1\n"))
    with pytest.raises(
        DataError, match=r"cannot tell the format of '.*train.gz' \(which holds 'train'\).*data.format"
    ):
        load_table(unknown, data_config())
    assert len(load_table(unknown, data_config(format="csv"))) == 1
    zst = tmp_path / "train.csv.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match="compressed with zstd, which kdistill does not read"):
        load_table(zst, data_config())


# -- 5. split sizes as counts -----------------------------------------------------------------------------


def test_split_sizes_can_be_counts_and_the_test_split_comes_first(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", sentences(100, seed=3))
    counted = load_splits(data_config(train=str(path), test_fraction=30, validation_fraction=20))
    assert {role: len(split) for role, split in counted.items()} == {"train": 50, "test": 30, "validation": 20}
    # a fraction of validation is a share of what the test split left: 25% of 80
    shares = load_splits(data_config(train=str(path), test_fraction=0.2, validation_fraction=0.25))
    assert {role: len(split) for role, split in shares.items()} == {"train": 60, "test": 20, "validation": 20}
    # the test split is the same whatever the validation size
    again = load_splits(data_config(train=str(path), test_fraction=0.2, validation_fraction=5))
    assert again["test"].texts == shares["test"].texts


def test_a_count_larger_than_the_file_is_one_clear_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", sentences(100, seed=3))
    with pytest.raises(
        DataError, match=r"data.test_fraction asks for 1,600 test example\(s\) but .* has 100: ask for"
    ):
        load_splits(data_config(train=str(path), test_fraction=1600))
    with pytest.raises(DataError, match=r"data.validation_fraction asks for 90 .* has 80 left after the test split"):
        load_splits(data_config(train=str(path), test_fraction=20, validation_fraction=90))
    table = load_table(path, data_config())
    rest, held = split_table(table, 99, seed=0, name="validation")
    assert len(rest) == 1 and len(held) == 99


def test_split_counts_from_the_command_line_and_impossible_sizes(tmp_path: Path) -> None:
    from kdistill.app.config_loading import apply_overrides

    minimal = {"teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}, "data": {"train": "d.csv"}}
    config = parse_config(apply_overrides(minimal, ["data.test_fraction=1600", "data.validation_fraction=0.05"]))
    assert config.data.test_fraction == 1600 and isinstance(config.data.test_fraction, int)
    assert config.data.validation_fraction == 0.05
    assert problem({"validation_fraction": 1.5}).startswith(
        "data.validation_fraction: give a fraction between 0 and 1 (e.g. 0.1) or a whole number of examples"
    )
    assert problem({"test_fraction": 1600.0}) == (
        "data.test_fraction: a number of examples is written without a decimal point (1600), got 1600.0"
    )
    assert problem({"test_fraction": 0}).startswith("data.test_fraction: a number of examples must be at least 1")
    assert problem({"test_fraction": True}).startswith("data.test_fraction: give a fraction (e.g. 0.1) or a number")


# -- 6. a header that reads like data ---------------------------------------------------------------------


def test_a_first_row_that_looks_like_data_points_to_data_columns(tmp_path: Path) -> None:
    path = write_headerless(tmp_path / "train.csv", AG_ROWS)
    with pytest.raises(DataError) as caught:
        load_table(path, data_config())
    message = str(caught.value)
    assert "has no column 'text' (data.text_column); its columns are 3, Fears for T N pension after talks" in message
    assert "its first row looks like data, not a header" in message
    assert "data.columns: [column1, column2, column3]" in message and "\n" not in message
    # a real header that lacks the column gets no such note
    named = write_csv(tmp_path / "named.csv", sentences(4), header=("sentence", "label"))
    with pytest.raises(DataError) as caught:
        load_table(named, data_config())
    assert "looks like data" not in str(caught.value)


def test_a_data_row_read_as_a_header_with_a_repeated_value_points_to_data_columns(tmp_path: Path) -> None:
    path = write_headerless(tmp_path / "train.csv", [("1", "1", "a long first example of many words")])
    with pytest.raises(DataError, match=r"names the column '1' twice .*its first row looks like data.*data.columns"):
        load_table(path, data_config())


# -- any input is taken or one line -----------------------------------------------------------------------


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=120),
        st.lists(
            st.sampled_from(["__label__a", "__label__", "x", " ", "\t", "\n", "\r", "é", "\x0c"]), max_size=20
        ).map(lambda parts: " ".join(parts).encode("utf-8")),
    ),
    name=st.sampled_from(["d.ft", "d.txt", "d.csv.gz", "d.ft.bz2", "d.jsonl.xz", "d.zip", "d.csv"]),
)
def test_any_bytes_in_the_new_layouts_read_or_are_one_data_error(tmp_path: Path, raw: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(raw)
    layouts = {"d.txt": {"line_pattern": r"(?P<label>\S+)\s(?P<text>.*)"}, "d.csv": {"columns": ["label", "text"]}}
    before = sorted(tmp_path.iterdir())
    try:
        table = load_table(path, data_config(**layouts.get(name, {})))
        assert all(isinstance(text, str) and text.strip() for text in table.texts)
    except DataError as error:
        assert str(error) and "\n" not in str(error)
    assert sorted(tmp_path.iterdir()) == before


# -- end to end: kdistill distill on the user's own files -------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    save_classifier(root / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    return root


def distill_on(root: Path, name: str, data: dict[str, object]) -> dict[str, object]:
    """Run ``kdistill distill`` on ``data`` (1 epoch, a 1-layer student); the run's metrics."""
    output = root / "runs" / name
    config = write_run_config(
        root,
        f"{name}.yaml",
        data={"max_length": 16, **data},
        training={"epochs": 1, "batch_size": 16, "lr": 1.0e-3},
        output={"dir": str(output), "save_checkpoints": False, "save_best": False},
    )
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    resolved = yaml.safe_load((output / "config.yaml").read_text(encoding="utf-8"))
    assert {key: resolved["data"][key] for key in data} == data  # the resolved config records the layout
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))


def test_distill_on_a_headerless_csv_of_two_text_columns(teacher: Path) -> None:
    rows = sentences(64, seed=5, labels=("neg", "pos"))
    titles = sentences(64, seed=6)
    write_headerless(teacher / "news.csv", [(y, title, text) for (text, y), (title, _) in zip(rows, titles)])
    data = {
        "train": str(teacher / "news.csv"),
        "columns": AG_COLUMNS,
        "text_column": ["title", "description"],
        "test_fraction": 16,
        "validation_fraction": 8,
    }
    metrics = distill_on(teacher, "headerless", data)
    assert {role: metrics["data"][role] for role in ("train", "validation", "test")} == {
        "train": 40,
        "validation": 8,
        "test": 16,
    }


def test_distill_on_a_fasttext_file(teacher: Path) -> None:
    rows = sentences(48, seed=7, labels=("neg", "pos"))
    (teacher / "reviews.ft").write_text("".join(f"__label__{y} {text}\n" for text, y in rows), encoding="utf-8")
    metrics = distill_on(teacher, "fasttext", {"train": str(teacher / "reviews.ft"), "test_fraction": 0.25})
    assert metrics["data"]["test"] == 12
    # the labels are the teacher's own classes (neg, pos), not __label__neg
    assert json.loads((teacher / "runs" / "fasttext" / "student" / "config.json").read_text())["id2label"] == {
        "0": "neg",
        "1": "pos",
    }


def test_a_user_error_in_the_new_keys_is_one_line_from_the_command(teacher: Path) -> None:
    (teacher / "multi.ft").write_text("__label__neg __label__pos dull\n" * 10, encoding="utf-8")
    config = write_run_config(teacher, "multi.yaml", data={"train": str(teacher / "multi.ft")})
    line = one_line(["distill", str(config)])
    assert "line 1 has 2 labels (neg, pos)" in line


# -- docs -------------------------------------------------------------------------------------------------


def test_the_any_other_format_example_of_the_cli_docs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text[text.index("### Any other format") :]
    section = section[: section.index("\n## ")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    for label, words in (("pos", "a lovely film"), ("neg", "a dull film"), ("pos", "great fun")):
        folder = tmp_path / "reviews" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{len(list(folder.iterdir()))}.txt").write_text(words, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/cli.md", "exec"), {})
    table = load_table(tmp_path / "reviews.parquet", data_config())
    assert sorted(zip(table.texts, table.labels)) == [
        ("a dull film", "neg"),
        ("a lovely film", "pos"),
        ("great fun", "pos"),
    ]

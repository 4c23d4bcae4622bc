"""The settings of a bench run, compared as the run reads them."""

import keras
import pytest

from keras_memgeom.src.cli.parser import build_parser
from keras_memgeom.src.cli.settings import check_resume
from keras_memgeom.src.cli.settings import settings


def test_resume_compares_settings_as_the_run_reads_them():
    parse = build_parser().parse_args
    stored = settings(
        parse(["bench", "--methods", "finetune,online", "--strength", "50"])
    )
    previous = {
        "config": {"settings": stored},
        "backend": keras.backend.backend(),
    }
    same = [
        # Defaults said out loud, and the methods in another order.
        [
            "--methods",
            "online,finetune",
            "--strength",
            "online=50",
            "--estimator",
            "exact",
            "--decay",
            "1",
            "--epochs",
            "10",
            "--data-seed",
            "0",
            "--init-seed",
            "0",
            "--strength-grid",
            "1,2",  # used by no method: auto and sweep are not asked for
        ],
        ["--methods", "online,finetune", "--strength", "50", "--seed", "0"],
    ]
    for args in same:
        check_resume(previous, settings(parse(["bench", *args])), "d")
    for args, changed in [
        (["--methods", "online", "--strength", "50"], "--methods"),
        (["--methods", "finetune,online"], "--strength"),
        (
            ["--methods", "finetune,online", "--strength", "50", "--seed", "1"],
            r"--data-seed 0 \(now 1\)",
        ),
    ]:
        with pytest.raises(ValueError, match=changed):
            check_resume(previous, settings(parse(["bench", *args])), "d")


def test_results_that_recorded_fisher_examples_still_resume():
    parse = build_parser().parse_args
    args = ["bench", "--methods", "online", "--max-examples", "100"]
    stored = settings(parse(args))
    # Results files written before the rename call it `fisher_examples`.
    stored["fisher_examples"] = stored.pop("max_examples")
    previous = {
        "config": {"settings": stored},
        "backend": keras.backend.backend(),
    }
    check_resume(previous, settings(parse(args)), "d")
    old_flag = ["bench", "--methods", "online", "--fisher-examples", "100"]
    check_resume(previous, settings(parse(old_flag)), "d")
    with pytest.raises(ValueError, match="max.examples"):
        check_resume(
            previous,
            settings(parse(["bench", "--methods", "online"])),
            "d",
        )

"""The parser of `memgeom`: help for every option, arguments parsed once."""

from keras_memgeom.src.cli.parser import build_parser
from tests.cli.command_line import run_cli


def test_help_explains_every_flag(capsys):
    code, out, _ = run_cli(["bench", "--help"], capsys)
    assert code == 0
    parser = build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    for action in bench._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in out
    code, out, _ = run_cli([], capsys)
    assert code == 2 and "memgeom demo" in out


def test_typed_options_are_recorded_as_they_are_parsed():
    parse = build_parser().parse_args
    assert parse(["bench"]).given_options == frozenset()
    # A default said out loud is typed all the same.
    args = parse(["bench", "--decay", "1", "--quiet", "--strength", "5"])
    assert args.given_options == {"decay", "strength"}
    assert args.strength == (5.0, {})
    assert parse(["demo"]).given_options == frozenset()


def test_demo_holds_the_bench_settings_of_its_command_line():
    parse = build_parser().parse_args
    demo = vars(parse(["demo", "--seed", "3", "--quiet"]))
    bench = vars(
        parse(
            [
                "bench",
                "--scenario=permuted",
                "--dataset=digits",
                "--tasks=5",
                "--methods=finetune,online,joint",
                "--width=400",
                "--epochs=10",
                "--strength=1000",
                "--seed=3",
                "--quiet",
            ]
        )
    )
    ignored = ("command", "given_options")
    assert {k: v for k, v in demo.items() if k not in ignored} == {
        k: v for k, v in bench.items() if k not in ignored
    }

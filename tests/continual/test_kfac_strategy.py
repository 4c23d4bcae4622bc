import pytest

from keras_memgeom import continual
from keras_memgeom.src.cli.make_strategies import make_strategies


@pytest.mark.parametrize("strategy", [continual.Online, continual.EWC])
def test_kfac_memories_run_through_the_harness(tiny_stream, strategy):
    harness = continual.Harness(tiny_stream, width=16, epochs=1)
    method = strategy(structure="kfac", strength=10.0)
    document = harness.compare([method])
    run = document["methods"][method.name]
    assert run["config"]["structure"] == "kfac"
    assert run["config"]["rank"] == 32
    config = {k: v for k, v in run["config"].items() if k != "name"}
    assert strategy(**config).get_config() == run["config"]
    assert len(run["accuracy_matrix"]) == 2
    assert (
        run["effective_dimension"][0] > 0
    )  # from the Kronecker blocks' eigenvalues


def test_methods_without_a_kronecker_memory_refuse_it_by_name():
    with pytest.raises(ValueError, match="'online-ewc'.*'kfac'"):
        make_strategies("online,online-ewc", structure="kfac")
    with pytest.raises(ValueError, match="structure"):
        continual.Online(structure="full")
    (strategy,) = make_strategies("online", structure="kfac")
    assert strategy.structure == "kfac"

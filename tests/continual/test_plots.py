import os

from keras_memgeom import continual


def test_plots_are_written(tiny_document, tmp_path):
    paths = continual.plot_results(tiny_document, str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == [
        "accuracy_matrix_ewc.png",
        "accuracy_matrix_finetune.png",
        "accuracy_matrix_joint.png",
        "accuracy_matrix_online.png",
        "average_accuracy.png",
        "effective_dimension.png",
    ]
    assert sorted(os.listdir(tmp_path)) == names  # no temporary files left
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

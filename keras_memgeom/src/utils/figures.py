"""Matplotlib figures without pyplot, imported only when a picture is drawn."""


def new_figure(**kwargs):
    """A `matplotlib.figure.Figure` on the Agg canvas.

    Matplotlib is an optional dependency (the `harness` extra): the package
    imports it only here, when a picture is drawn.

    Args:
        **kwargs: passed to `Figure` (e.g. `figsize`, `layout`).

    Returns:
        The figure.

    Raises:
        ImportError: if matplotlib is not installed, naming the extra.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "Drawing plots needs matplotlib: "
            'pip install "keras-memgeom[harness]".'
        ) from None
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure

"""``noether plot``: chosen metrics of one or more runs against the update counter, in one image.

matplotlib is an optional extra (``plot``), imported only when a plot is drawn; like
:mod:`noether_core.io.runs`, nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from noether_core.errors import EXIT_OK, UsageError
from noether_core.io.runs import DEFAULT_PATTERNS, Series, existing_run, match_keys, read_series

INSTALL_COMMAND = "pip install -c constraints.txt -e '.[plot]'"
#: Subplots side by side before a new row starts; more would make each too narrow to read.
MAX_COLUMNS = 3
#: Inches of one subplot, drawn at :data:`DPI`: 640 x 400 pixels.
SUBPLOT_SIZE = (6.4, 4.0)
DPI = 100
#: Below this many points a line gets markers: a metric logged once or twice is otherwise invisible.
MARKER_BELOW = 30


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """The run ids, or the paths as given where two runs share an id (``a/run`` and ``b/run``)."""
    ids = [path.resolve().name for path in run_dirs]
    return [
        str(path) if ids.count(run_id) > 1 else run_id for path, run_id in zip(run_dirs, ids, strict=True)
    ]


def _matched(run_dirs: Sequence[Path], patterns: Sequence[str]) -> tuple[list[str], list[dict[str, Series]]]:
    """The keys to draw and every run's series of them; a pattern matching nothing is an error."""
    all_series: list[dict[str, Series]] = []
    present: set[str] = set()
    for run_dir in run_dirs:
        series, keys = read_series(run_dir, patterns)
        all_series.append(series)
        present |= keys
    where = ", ".join(str(p) for p in run_dirs)
    if not present:
        raise UsageError(f"no metrics to plot: {where} {'has' if len(run_dirs) == 1 else 'have'} none yet")
    for pattern in patterns:
        if not match_keys(present, [pattern]):
            raise UsageError(
                f"no metric matches {pattern!r} in {where}; the keys there: {', '.join(sorted(present))}"
            )
    return match_keys(present, patterns), all_series


def _output_format(output: Path, supported: Sequence[str]) -> str:
    suffix = output.suffix.lstrip(".").lower()
    if suffix not in supported:
        raise UsageError(
            f"cannot write {str(output)!r}: name it with one of the suffixes {', '.join(sorted(supported))}"
        )
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {str(output)!r}: the folder {str(output.parent)!r} does not exist")
    return suffix


def plot_runs(run_dirs: Sequence[Path | str], patterns: Sequence[str] | None, output: Path | str) -> Path:
    """Draw the metrics of ``run_dirs`` matching the ``fnmatch`` ``patterns`` (default
    :data:`~noether_core.io.runs.DEFAULT_PATTERNS`) to ``output``: one subplot per metric, x the update,
    one line per run labelled with its run id. The format follows ``output``'s suffix (``.png``, ``.pdf``,
    ``.svg``...). Returns ``output``.

    Raises :class:`~noether_core.errors.UsageError` for a missing run, a pattern that matches no metric
    of any run, an output that cannot be written, or when matplotlib is not installed.
    """
    # the user's mistakes first, also where matplotlib is missing
    dirs = [existing_run(run_dir) for run_dir in run_dirs]
    keys, all_series = _matched(dirs, list(patterns or DEFAULT_PATTERNS))
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            f"noether plot needs matplotlib, which is not installed: {INSTALL_COMMAND}"
        ) from None
    # the image goes to a file: no window, so no GUI toolkit is needed (a headless machine has none)
    matplotlib.use("Agg")
    # a Figure of its own rather than pyplot's: nothing is kept in pyplot's registry between calls
    from matplotlib.figure import Figure

    output = Path(output)
    columns = min(len(keys), MAX_COLUMNS)
    rows = math.ceil(len(keys) / columns)
    figure = Figure(
        figsize=(SUBPLOT_SIZE[0] * columns, SUBPLOT_SIZE[1] * rows), dpi=DPI, layout="constrained"
    )
    suffix = _output_format(output, list(figure.canvas.get_supported_filetypes()))
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    labels = _labels(dirs)
    for ax, key in zip(axes, keys, strict=False):
        for label, series in zip(labels, all_series, strict=True):
            found = series.get(key)
            if found is None:
                continue
            # an infinity would stretch the axis to nothing; like NaN, it leaves a gap in the line
            values = [v if math.isfinite(v) else math.nan for v in found.values]
            marker = "o" if len(values) < MARKER_BELOW else None
            ax.plot(found.updates, values, label=label, marker=marker, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    figure.savefig(output, format=suffix)
    return output


def plot_command(run_dirs: Sequence[Path], patterns: Sequence[str] | None, output: Path) -> int:
    """``noether plot``: draw, then say where the image went."""
    written = plot_runs(run_dirs, patterns, output)
    print(f"wrote {written}")
    return EXIT_OK


__all__ = ["INSTALL_COMMAND", "plot_command", "plot_runs"]

"""The figures of ``train --plot`` and ``bench --plot`` (``gpuconv.tools.plots``), read back from
matplotlib: every point marked, whole epochs on the x axis, log scale where values span a decade,
a single epoch still drawn, ratio bars growing from 1 on a log axis."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from gpuconv.tools import plots  # noqa: E402


def history(losses_train, losses_test=None):
    losses_test = losses_test or [2 * v for v in losses_train]
    return [{"epoch": i + 1, "train_loss": a, "test_loss": b, "train_accuracy": 1 - a / 4,
             "test_accuracy": 1 - b / 4, "seconds": 1.0, "samples_per_second": 100.0}
            for i, (a, b) in enumerate(zip(losses_train, losses_test))]


def visible_ticks(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_one_epoch_draws_marked_points_on_a_whole_epoch_axis():
    fig = plots.training_figure(history([1.2]), "one epoch")
    fig.canvas.draw()
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        lines = ax.get_lines()
        assert len(lines) == 2                                     # train and test
        for line in lines:
            assert len(line.get_xdata()) == 1
            assert line.get_marker() not in (None, "", "None", " ")  # one point shows only as a marker
        assert visible_ticks(ax) == [1.0]
    assert "last test 40.00%" in ax_acc.get_title()              # test loss 2.4 -> accuracy 1 - 2.4/4


def test_many_epochs_show_whole_numbers_and_a_log_loss_when_it_spans_a_decade():
    falling = [1.2 * 0.6 ** i for i in range(20)]               # 1.2 down to 7e-5
    fig = plots.training_figure(history(falling), "twenty epochs")
    fig.canvas.draw()
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log" and "log scale" in ax_loss.get_ylabel()
    assert ax_acc.get_yscale() == "linear"
    for ax in (ax_loss, ax_acc):
        ticks = visible_ticks(ax)
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
        assert all(line.get_marker() not in (None, "", "None", " ") for line in ax.get_lines())
    flat = plots.training_figure(history([1.0, 0.8, 0.6]), "three epochs")
    flat.canvas.draw()
    assert flat.axes[0].get_yscale() == "linear"                 # 1.0 to 0.6 (test 2.0 to 1.2)
    assert visible_ticks(flat.axes[0]) == [1.0, 2.0, 3.0]


def test_wants_log_scale():
    assert plots.wants_log_scale([1.0, 0.1]) and not plots.wants_log_scale([1.0, 0.11])
    assert not plots.wants_log_scale([1.0, 0.0])                 # a zero cannot go on a log axis
    assert not plots.wants_log_scale([])


def bench_doc(baselines=("torch",)):
    rows = []
    for layer, ratio in (("L1", 0.01), ("C2", 4.0), ("P1", None)):
        rows.append({"kind": "gpuconv", "layer": layer, "op": "conv2d_forward", "version": "default",
                     "ratio": {b: None if ratio is None else ratio * (k + 1)
                               for k, b in enumerate(baselines)}})
        rows.append({"kind": "baseline", "layer": layer, "op": "conv2d_forward", "version": baselines[0],
                     "ratio": {}})
    return {"rows": rows, "settings": {"baselines": list(baselines), "backend": "numpy", "batch": 2},
            "environment": {"cpu": "test cpu", "gpu": None}}


def test_bench_bars_grow_from_one_on_a_log_axis():
    fig = plots.bench_figure(bench_doc())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    bars = [p for c in ax.containers for p in c]
    ends = [(p.get_x(), p.get_x() + p.get_width()) for p in bars]
    assert ends == [(1.0, pytest.approx(0.01)), (1.0, pytest.approx(4.0))]   # the row without a ratio: no bar
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["L1 conv forward", "C2 conv forward", "P1 conv forward"]
    assert "torch" in ax.get_xlabel()


def test_bench_with_two_baselines_has_a_legend_and_two_bars_per_row():
    fig = plots.bench_figure(bench_doc(("torch", "torch-tf32")))
    ax = fig.axes[0]
    ends = [p.get_x() + p.get_width() for c in ax.containers for p in c]
    assert ends == pytest.approx([0.01, 4.0, 0.02, 8.0])          # per baseline, the rows with a ratio
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["÷ torch", "÷ torch-tf32"]


def test_bench_figure_refuses_a_document_without_ratios():
    doc = bench_doc()
    for r in doc["rows"]:
        r["ratio"] = {}
    with pytest.raises(ValueError, match="--plot needs timed rows with a baseline"):
        plots.bench_figure(doc)

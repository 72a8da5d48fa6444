"""The figures the tools draw (matplotlib, the ``plot`` extra): training curves and benchmark ratios.

Both are meant to be read at a glance: every measured point is marked, epochs are whole numbers,
a quantity that spans more than a decade is drawn on a log scale, and the figure says in words
which way is better.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .. import fileio

__all__ = ["require_matplotlib", "training_curves", "training_figure", "bench_ratios", "bench_figure",
           "wants_log_scale", "LOG_SPAN"]

LOG_SPAN = 10.0   # a positive quantity whose largest value is this many times its smallest: log scale


def require_matplotlib(flag: str = "--plot") -> None:
    """Raise ValueError naming ``flag`` when matplotlib cannot be imported (check before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(f"{flag} needs matplotlib, which is not installed "
                         f"(pip install matplotlib, or pip install gpuconv[plot])") from None


def _pyplot():
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def wants_log_scale(values: Sequence[float]) -> bool:
    """Whether ``values`` (all positive) span at least LOG_SPAN, so that a log axis shows them all."""
    vals = [v for v in values if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= LOG_SPAN


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    try:
        fileio.save_figure(fig, path, "--plot", dpi=110)
    finally:
        plt.close(fig)


def training_curves(history: List[Dict[str, Any]], path: str, title: str) -> None:
    """``training_figure`` to an image file (the format from the file name, e.g. .png)."""
    _save(training_figure(history, title), path)


def training_figure(history: List[Dict[str, Any]], title: str):
    """Loss and accuracy per epoch (train and test): a matplotlib Figure.

    Loss is drawn on a log scale once it spans a decade (it usually falls by several); the last
    test figures are in the panel titles. A single epoch gives single marked points."""
    if not history:
        raise ValueError("history must hold at least one epoch")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    size = 6 if len(epochs) <= 10 else 4
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"train": dict(color="tab:blue", marker="o", markersize=size),
              "test": dict(color="tab:orange", marker="s", markersize=size)}
    losses = []
    for split, style in styles.items():
        loss = [h[f"{split}_loss"] for h in history]
        losses += loss
        ax_loss.plot(epochs, loss, label=split, **style)
        ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], label=split, **style)
    log_loss = wants_log_scale(losses)
    if log_loss:
        ax_loss.set_yscale("log")
    last = history[-1]
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy" + (" (log scale)" if log_loss else ""),
                title=f"loss, lower is better (last test {last['test_loss']:.4f})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)",
               title=f"accuracy, higher is better (last test {100 * last['test_accuracy']:.2f}%)")
    lo, hi = min(epochs), max(epochs)
    pad = max(0.5, 0.03 * (hi - lo))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(lo - pad, hi + pad)
        ax.grid(alpha=0.3, which="both" if ax is ax_loss and log_loss else "major")
    fig.suptitle(title)
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))    # the legend sits below the panels, clear of the data
    return fig


def bench_ratios(doc: Dict[str, Any], path: str) -> None:
    """``bench_figure`` to an image file."""
    _save(bench_figure(doc), path)


def bench_figure(doc: Dict[str, Any]):
    """gpuconv time / baseline time for every timed gpuconv row of a bench document, one
    horizontal bar per row and baseline, growing from 1 (equal time) on a log axis: a Figure."""
    import numpy as np

    rows = [r for r in doc["rows"] if r["kind"] == "gpuconv" and r["ratio"]]
    names = [b for b in doc["settings"]["baselines"] if any(r["ratio"].get(b) for r in rows)]
    if not rows or not names:
        raise ValueError("--plot needs timed rows with a baseline (--baseline torch, ...)")
    plt = _pyplot()
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.26 * len(rows) * max(1, len(names) * 0.7)))
    ys = np.arange(len(rows))
    ratios = [r["ratio"].get(b) for r in rows for b in names if r["ratio"].get(b)]
    lo, hi = min(min(ratios), 1.0), max(max(ratios), 1.0)
    for j, b in enumerate(names):
        vals = [r["ratio"].get(b) for r in rows]
        pos = ys + (j - (len(names) - 1) / 2) * height
        shown = [(y, v) for y, v in zip(pos, vals) if v]
        # each bar grows from 1 (equal time): leftwards where gpuconv is faster, rightwards where slower
        ax.barh([y for y, _ in shown], [v - 1.0 for _, v in shown], height, left=1.0, label=f"÷ {b}")
        for y, v in shown:
            label = f"{v:.2f}×" if 0.1 <= v < 10 else f"{v:.2g}×"
            ax.annotate(label, (v, y), textcoords="offset points", xytext=(3 if v >= 1 else -3, 0),
                        ha="left" if v >= 1 else "right", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(lo / 3, hi * 3)
    ax.axvspan(lo / 3, 1.0, color="tab:green", alpha=0.07, lw=0)
    ax.axvspan(1.0, hi * 3, color="tab:red", alpha=0.07, lw=0)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.text(0.98, 1.0, "gpuconv faster ", transform=ax.get_xaxis_transform(), ha="right", va="bottom",
            fontsize=8, color="tab:green")
    ax.text(1.02, 1.0, " gpuconv slower", transform=ax.get_xaxis_transform(), ha="left", va="bottom",
            fontsize=8, color="tab:red")
    ax.set_yticks(ys)
    ax.set_yticklabels([_row_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    over = names[0] if len(names) == 1 else "baseline"
    ax.set_xlabel(f"gpuconv time / {over} time (log scale; 1 = equal time)")
    ax.grid(axis="x", alpha=0.3, which="both")
    env, s = doc["environment"], doc["settings"]
    ax.set_title(f"gpuconv bench on {env.get('gpu') or env.get('cpu')} ({s['backend']}, batch {s['batch']})",
                 fontsize=10, pad=18)
    if len(names) > 1:
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=len(names), frameon=False,
                   fontsize=8)
    fig.tight_layout(rect=(0, 0.03 if len(names) > 1 else 0, 1, 1))
    return fig


def _row_label(r: Dict[str, Any]) -> str:
    op = r["op"].replace("conv2d_", "conv ").replace("_pool2d_", " pool ").replace("_", " ")
    version = "" if r["version"] == "default" else f" {r['version']}"
    return f"{r['layer']} {op}{version}"

"""Charts the notebooks show. Each returns a matplotlib Figure; nothing here computes results."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .data.folders import ImageFolder


def _plt():
    # matplotlib picks a headless backend by itself when there is no display,
    # and the inline one inside Jupyter.
    import matplotlib.pyplot as plt

    return plt


def class_counts(counts_by_split: Mapping[str, Mapping[str, int]], title: str = "Images per class"):
    """Grouped bar chart: one group per class, one bar per split."""
    plt = _plt()
    splits = [s for s, c in counts_by_split.items() if c and "(unlabeled)" not in c]
    classes = sorted({cls for s in splits for cls in counts_by_split[s]})
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(classes))
    for i, split in enumerate(splits):
        values = [counts_by_split[split].get(c, 0) for c in classes]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=split)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, classes)
    ax.set_ylabel("images")
    ax.set_title(title)
    top = max((v for s in splits for v in counts_by_split[s].values()), default=1)
    ax.set_ylim(0, top * 1.2)  # room above the tallest bar's label for the legend, which then covers no bar
    ax.legend(ncol=max(1, len(splits)), loc="upper center", frameon=False)
    fig.tight_layout()
    return fig


def sample_grid(folder: ImageFolder, per_class: int = 6, seed: int = 0, title: str = "Samples per class",
                skip: Sequence[str] = ()):
    """A grid with one row per class (or one row of unlabeled images)."""
    from PIL import Image

    plt = _plt()
    rng = np.random.default_rng(seed)
    skip_set = set(map(str, skip))
    rows = folder.classes or ["(unlabeled)"]
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.6 * per_class, 1.7 * len(rows)), squeeze=False)
    for r, cls in enumerate(rows):
        label = r if folder.classes else -1
        pool = [f for f, l in zip(folder.files, folder.labels) if l == label and str(f) not in skip_set]
        picks = rng.choice(len(pool), size=min(per_class, len(pool)), replace=False) if pool else []
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picks):
                with Image.open(pool[picks[c]]) as img:
                    ax.imshow(img.convert("RGB"))
            if c == 0:
                ax.set_title(cls, loc="left", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bars(values: Mapping[str, float], ylabel: str, title: str, fmt: str = "{:.1f}", color: str | None = None):
    """One bar per name, labelled with its value."""
    plt = _plt()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.4))
    drawn = ax.bar(names, [values[n] for n in names], color=color)
    ax.bar_label(drawn, labels=[fmt.format(values[n]) for n in names], fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def upload_comparison(results: Sequence[Mapping], title: str = "S3 upload"):
    """Seconds and files/s side by side for several uploads (records' dicts)."""
    plt = _plt()
    names = [r["name"] for r in results]
    seconds = [r["seconds"] for r in results]
    rates = [r["files_per_s"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(names) + 3), 3.4))
    for ax, vals, label, fmt in ((a, seconds, "seconds (lower is better)", "{:.1f}"),
                                 (b, rates, "files/s (higher is better)", "{:.0f}")):
        drawn = ax.bar(names, vals)
        ax.bar_label(drawn, labels=[fmt.format(v) for v in vals], fontsize=9)
        ax.set_title(label)
        ax.margins(y=0.15)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves(histories: Mapping[str, Sequence[Mapping]], title: str = "Learning curves"):
    """Validation accuracy and training loss per epoch, one line per run (instance)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        a.plot(epochs, [h.get("val_accuracy", float("nan")) for h in history], marker="o", label=name)
        b.plot(epochs, [h["train_loss"] for h in history], marker="o", label=name)
    _epoch_axes(a, b, histories)
    a.set_ylabel("validation accuracy")
    b.set_ylabel("training loss")
    a.legend()
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _epoch_axes(accuracy_axis, loss_axis, histories: Mapping[str, Sequence[Mapping]]) -> None:
    """Whole epochs on the x axes; an accuracy axis that shows at least 5 points of range, so a run that sits at
    99.6-100 % looks flat rather than like a cliff."""
    from matplotlib.ticker import MaxNLocator

    for ax in (accuracy_axis, loss_axis):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [h["val_accuracy"] for history in histories.values() for h in history if h.get("val_accuracy") is not None]
    if values:
        top = min(1.0, max(values) + 0.01)
        accuracy_axis.set_ylim(max(0.0, min(min(values) - 0.01, top - 0.05)), top + 0.005)


def accuracy_over_time(histories: Mapping[str, Sequence[Mapping]], title: str = "Validation accuracy over time"):
    """Validation accuracy against wall-clock seconds: what time-to-accuracy looks like."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, history in histories.items():
        ax.plot([h["elapsed_seconds"] for h in history], [h.get("val_accuracy", float("nan")) for h in history],
                marker="o", label=name)
    ax.set_xlabel("seconds since the script started")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix, classes: Sequence[str], title: str = "Confusion matrix", normalize: bool = True):
    """Rows: true class; columns: predicted. Normalised per row, with the counts written in."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    fig, ax = plt.subplots(figsize=(5.8, 5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def image_gallery(items: Sequence[Mapping], columns: int = 6, title: str = "", caption: str = "{label}"):
    """A grid of image files, each captioned from its item (keys: file and whatever ``caption`` names)."""
    from PIL import Image

    plt = _plt()
    n = max(1, len(items))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(items):
            with Image.open(items[k]["file"]) as img:
                ax.imshow(img.convert("RGB"))
            ax.set_title(caption.format(**items[k]), fontsize=7.5)
    if not items:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

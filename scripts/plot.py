"""Figures of runs: training curves, test AUC with error bars over seeds, training throughput.

    python scripts/plot.py curves RUN_DIR [RUN_DIR ...] --out curves.png   # valid AUC and train loss per step
    python scripts/plot.py auc DIR [DIR ...] --out auc.svg                 # test AUC per configuration
    python scripts/plot.py throughput DIR [DIR ...] --out speed.png        # training samples/s per configuration

``curves`` reads each run's TensorBoard event files (tensorboard's EventAccumulator: ``valid/auc`` and
``train/loss``, every event file of the run dir, a resumed run's purged points dropped) and draws one line per
run on two panels. ``auc`` and ``throughput`` take scripts/results.py's aggregation of every run below the
DIRs: one point (auc, on an axis zoomed to the values) or bar (throughput) per configuration, labelled by
the model and the keys that differ between configurations;
the mean over seeds with the sample std as error bar (none for a single seed). ``--out``'s suffix picks the
format (.png or .svg); without a suffix both ``F.png`` and ``F.svg`` are written. Matplotlib runs headless
(the Agg backend).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import results  # noqa: E402

FORMATS = (".png", ".svg")
CURVES = (("valid/auc", "valid AUC"), ("train/loss", "train loss"))


def outputs(out: Path) -> list[Path]:
    """``f.png`` -> [f.png]; ``f`` -> [f.png, f.svg]; any other suffix is an error."""
    if out.suffix in FORMATS:
        return [out]
    if out.suffix:
        raise ValueError(f"--out {out}: the suffix picks the format: .png or .svg (or none for both)")
    return [out.with_suffix(s) for s in FORMATS]


def save(fig: Any, out: Path) -> list[Path]:
    paths = outputs(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def read_scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar of a run's event files; empty when the run has none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return [], []
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def run_label(run_dir: Path, all_dirs: Sequence[Path]) -> str:
    """The part of the run's path that tells it from the other plotted runs."""
    parts = [d.resolve().parts for d in all_dirs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return "/".join(run_dir.resolve().parts[common:]) or run_dir.name


def plot_curves(run_dirs: Sequence[Path], out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    drawn = 0
    for run_dir in run_dirs:
        label = run_label(run_dir, run_dirs)
        for ax, (tag, _) in zip(axes, CURVES):
            steps, values = read_scalars(run_dir, tag)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
                drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no valid/auc or train/loss points in the event files of {', '.join(map(str, run_dirs))}")
    for ax, (_, title) in zip(axes, CURVES):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(fig, out)


def row_label(row: results.Row, table: results.Table) -> str:
    parts = [row.key.get("model", "?")]
    for k in table.varying:
        if k == "model":
            continue
        if k == "data":
            parts.append(f"data={row.data}")
        elif k in row.key:
            parts.append(f"{k}={results.show(row.key[k])}")
    return "\n".join(parts)


def plot_bars(table: results.Table, column: str, ylabel: str, title: str, out: Path) -> list[Path]:
    bars = [(row_label(r, table), r.stats(column)) for r in table.rows]
    bars = [(label, s) for label, s in bars if s is not None]
    if not bars:
        raise ValueError(f"no run below the given dirs has {column}")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 1), 4))
    x = range(len(bars))
    means = [s[0] for _, s in bars]
    errors = [s[1] or 0.0 for _, s in bars]
    if column == "auc":  # AUCs differ in the third decimal: points on a zoomed axis (a cut bar would mislead)
        ax.errorbar(x, means, yerr=errors, fmt="o", capsize=4, color="tab:blue")
    else:
        ax.bar(x, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(list(x), [label for label, _ in bars], fontsize=7)
    if column == "auc":
        low = min(m - e for m, e in zip(means, errors))
        high = max(m + e for m, e in zip(means, errors))
        pad = max(0.005, 0.2 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    for name, what in (("curves", "run dirs"), ("auc", "dirs holding runs"), ("throughput", "dirs holding runs")):
        s = sub.add_parser(name)
        s.add_argument("dirs", nargs="+", type=Path, help=what)
        s.add_argument("--out", type=Path, required=True, help="F.png, F.svg, or F (both)")
    args = p.parse_args(argv)
    results.require_dirs(p, args.dirs)
    try:
        if args.figure == "curves":
            written = plot_curves(args.dirs, args.out)
        else:
            table = results.aggregate(args.dirs, params=False)
            n = sum(len(r.runs) for r in table.rows)
            if args.figure == "auc":
                written = plot_bars(table, "auc", "test AUC (mean ± std over seeds)", f"test AUC ({n} runs)",
                                    args.out)
            else:
                written = plot_bars(table, "samples_per_s", "training samples/s (mean ± std over seeds)",
                                    f"training throughput ({n} runs)", args.out)
    except ValueError as e:
        p.error(str(e))
    print("plot.py: wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

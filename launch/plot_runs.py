"""`tessera plot`: training curves of one or more run directories as a PNG, and each run's
confusion matrix (from summary.json) as RUN_DIR/confusion_matrix.png.

    plot_runs.py -o OUT.png RUN_DIR [RUN_DIR...]

Reads RUN_DIR/metrics.jsonl (the trainer's events) and draws, one line per run:
train loss, test accuracy, learning rate and throughput (samples/s of the job) against the step.
Run by `tessera plot` with Debian's /usr/bin/python3 and python3-matplotlib; exits 2 with a
message naming the file and line when a run directory cannot be read.
"""
import argparse
import json
import math
import os
import sys

try:
    import matplotlib
except ImportError:
    sys.exit(f"tessera plot: {sys.executable} has no matplotlib: install python3-matplotlib (Debian) "
             "or point TESSERA_PYTHON at a python that has it")
matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [  # (event, key, title, y label, log scale)
    ("train", "loss", "training loss", "loss", True),
    ("eval", "test_accuracy", "test accuracy", "accuracy", False),
    ("train", "lr", "learning rate", "lr", False),
    ("train", "samples_per_sec", "throughput", "samples/s", False),
]


class RunError(Exception):
    pass


def read_events(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isdir(run):
        raise RunError(f"{run}: not a directory")
    if not os.path.isfile(path):
        raise RunError(f"{path}: missing (is {run} a tessera run directory?)")
    events = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunError(f"{path}:{n}: not JSON ({err.msg} at column {err.colno})") from None
            except (ValueError, RecursionError) as err:  # an integer of over 4300 digits, or nesting too deep
                raise RunError(f"{path}:{n}: unreadable JSON ({err})") from None
            if not isinstance(e, dict) or not isinstance(e.get("event"), str):
                raise RunError(f"{path}:{n}: not a tessera event (an object with an \"event\" field)")
            events.append(e)
    return events


def number(v):
    """`v` as a finite float, or None: a boolean, a non-number or a number beyond float's range is absent."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:  # an integer such as 10**400
        return None
    return v if math.isfinite(v) else None


def series(events, kind, key):
    xs, ys = [], []
    for e in events:
        if e["event"] != kind:
            continue
        step, value = number(e.get("step")), number(e.get(key))
        if step is not None and value is not None:
            xs.append(step)
            ys.append(value)
    return xs, ys


def plot_curves(runs, out):
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (kind, key, title, ylabel, log) in zip(axes.flat, PANELS):
        drawn = 0
        for name, events in runs:
            xs, ys = series(events, kind, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=name)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if drawn and log and all(v > 0 for _, ev in runs for v in series(ev, kind, key)[1]):
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, f"no {kind} events with {key}", ha="center", va="center", transform=ax.transAxes)
        elif len(runs) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(", ".join(name for name, _ in runs) if len(runs) <= 4 else f"{len(runs)} runs")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion(run):
    """RUN_DIR/confusion_matrix.png from summary.json; None when the run has no summary yet, or is
    of a language model (it has a test perplexity instead)."""
    path = os.path.join(run, "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
    except UnicodeDecodeError as err:
        raise RunError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError) as err:  # an integer of over 4300 digits, or nesting too deep
        raise RunError(f"{path}: unreadable JSON ({err})") from None
    if isinstance(s, dict) and "test_perplexity" in s and "confusion_matrix" not in s:
        return None  # a language model: no classes to confuse
    cm = s.get("confusion_matrix") if isinstance(s, dict) else None
    k = len(cm) if isinstance(cm, list) else 0
    if k == 0 or k > 1000 or not all(isinstance(r, list) and len(r) == k and  # counts: not booleans, and int64
                                     all(type(v) is int and 0 <= v < 2**63 for v in r) for r in cm):
        raise RunError(f"{path}: confusion_matrix is not a square matrix of counts")
    size = min(12, 3 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 30:
        peak = max(max(r) for r in cm) or 1
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i][j] > peak / 2 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    acc = number(s.get("test_accuracy"))
    ax.set_title(f"{os.path.basename(os.path.normpath(run))}: confusion matrix" +
                 (f" (accuracy {acc:.4f})" if acc is not None else ""))
    fig.tight_layout()
    out = os.path.join(run, "confusion_matrix.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main():
    p = argparse.ArgumentParser(prog="tessera plot")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--no-confusion", action="store_true")
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    try:
        runs = [(os.path.basename(os.path.normpath(r)), read_events(r)) for r in a.runs]
        plot_curves(runs, a.output)
        print(f"wrote {a.output} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
        if not a.no_confusion:
            for r in a.runs:
                out = plot_confusion(r)
                print(f"wrote {out}" if out else f"{r}: no summary.json yet (run not finished): no confusion matrix")
    except RunError as e:
        print(f"tessera plot: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"tessera plot: {e.filename or a.output}: {e.strerror}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

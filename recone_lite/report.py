"""`recone-lite report`: pictures of a training run and of its evaluations, as PNGs and one HTML
page, drawn from what `train` / `sft` and `eval` already write:

    RUN_DIR/run.json     kind, recipe, status, dev_before / dev_history / dev_metrics, alarms
    RUN_DIR/log.jsonl    TRL's log history, one entry per logged step (reward, rates, loss, ...)
    EVAL.json            what `recone-lite eval` prints on stdout (model, baselines, per rating,
                         histograms, confusion matrix, readout); `demo`'s output is read too

Training: one picture per panel of PANELS that the log has values for (GRPO: reward, rates,
completion tokens, loss, entropy; SFT: loss, entropy, token accuracy), then the dev metrics at
each evaluation; a dashed red line marks the step where an alarm fired. Evaluation: the confusion
matrix, MAE per true rating beside every baseline, predictions' histogram beside the truth's, the
calibration under the expected readout; with several `--eval` files one table and one set of bars.

matplotlib draws (the `report` extra), headless (Agg), imported only when drawing. Without it the
same series go to the terminal as tables and sparklines, with a one-line hint. What each picture
shows: docs/report.md.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from recone_lite.baselines import BASELINES, LABELS
from recone_lite.errors import InputError, no_file
from recone_lite.evaluate import print_report
from recone_lite.files import atomic_path, check_inputs_outside, check_target
from recone_lite.jsonl import read_jsonl
from recone_lite.log import console, info
from recone_lite.metrics import fmt_metric
from recone_lite.run_folder import RunFolder
from recone_lite.runs import LOG_JSONL, RUN_JSON

HINT = ("report: no pictures, matplotlib is not installed; pip install 'recone-lite[report]' "
        "draws them")
WIDTH, HEIGHT, DPI = 800, 450, 100  # every picture, in pixels
HTML_NAME = "report.html"
# everything `report` writes in its --out folder: the page and its pictures. A folder holding
# anything else (a run, an eval file, the user's notes) is never replaced
LAYOUT = (HTML_NAME, "*.png")
MODEL = "#d62728"  # the model is red in every picture; baselines and the truth are not
BASELINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


class Panel(NamedTuple):
    """A training picture: log keys drawn per step, `band` the keys of a shaded range around the
    first (± a spread, or min..max), `limits` the y range (rates are 0..1)."""

    name: str
    title: str
    series: tuple[tuple[str, str], ...]
    band: tuple[str, ...] = ()
    limits: tuple[float, float] | None = None


PANELS = (
    Panel("reward", "Reward per step: mean, ± its spread (std), and each reward function",
          (("reward", "reward"),), band=("reward_std",)),
    Panel("rates", "Format rate, parse rate, clipped completions, groups with equal rewards",
          (("format_rate", "format rate"), ("parse_rate", "parse rate"),
           ("completions/clipped_ratio", "clipped ratio"),
           ("frac_reward_zero_std", "groups with identical rewards")), limits=(-0.02, 1.02)),
    Panel("tokens", "Completion tokens per step: mean, min..max",
          (("completions/mean_length", "mean completion tokens"),),
          band=("completions/min_length", "completions/max_length")),
    Panel("loss", "Training loss", (("loss", "loss"),)),
    Panel("entropy", "Token entropy of the policy", (("entropy", "entropy"),)),
    Panel("accuracy", "Token accuracy on the answers (SFT)",
          (("mean_token_accuracy", "mean token accuracy"),)),
)
DEV_SERIES = (("mae", "MAE"), ("rmse", "RMSE"), ("coverage", "coverage"),
              ("format_rate", "format rate"))


# --- reading ------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json, the per-step log entries (dev and summary entries left out) and the dev points
    (dev_history, else dev_before at step 0 and dev_metrics at the last step)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file() and not (run_dir / LOG_JSONL).is_file():
        raise InputError(f"not a run folder (no {RUN_JSON} or {LOG_JSONL})", path=run_dir)
    record = RunFolder(run_dir).run
    steps = []
    if (run_dir / LOG_JSONL).is_file():
        for _, entry in read_jsonl(run_dir / LOG_JSONL):
            if "train_runtime" in entry or any(k.startswith("dev/") for k in entry):
                continue
            if isinstance(entry.get("step"), (int, float)):
                steps.append(entry)
    dev = [d for d in record.get("dev_history") or [] if isinstance(d, dict)]
    if not dev:
        before, after = record.get("dev_before"), record.get("dev_metrics")
        dev = [{"step": 0, **before}] if before else []
        dev += [{"step": record.get("global_step", 0), **after}] if after else []
    return {"name": run_dir.resolve().name, "dir": str(run_dir), "record": record,
            "steps": steps, "dev": dev, "alarms": list(record.get("alarms") or [])}


def read_eval(path: Path) -> dict[str, Any]:
    """The JSON `recone-lite eval` printed (or `demo`'s, which holds it under "eval")."""
    path = Path(path)
    if not path.is_file():
        raise no_file(path=path)
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        report = json.loads(text)
    except json.JSONDecodeError:  # e.g. stderr went to the same file: take the last JSON line
        lines = [line for line in text.splitlines() if line.startswith("{")]
        try:
            report = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            report = None
    if isinstance(report, dict) and isinstance(report.get("eval"), dict):
        report = report["eval"]
    if not isinstance(report, dict) or not {"model", "baselines"} <= set(report):
        raise InputError("not the JSON of `recone-lite eval` (no model and baselines); write it "
                         "with `recone-lite eval ... > eval.json`", path=path)
    return report


def eval_labels(paths: list[Path]) -> list[str]:
    """Short names of the --eval files: their stems, with the folder where two stems clash.

    >>> eval_labels([Path("a/before.json"), Path("a/after.json")])
    ['before', 'after']
    >>> eval_labels([Path("a/eval.json"), Path("b/eval.json")])
    ['a/eval', 'b/eval']
    """
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def series(steps: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one log key where it is a number."""
    pairs = [(float(e["step"]), float(e[key])) for e in steps
             if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def panel_series(panel: Panel, steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (key, label) pairs a panel draws: its own, plus each reward function's mean on the
    reward panel (`rewards/NAME/mean`)."""
    drawn = list(panel.series)
    if panel.name == "reward":
        names = dict.fromkeys(k for e in steps for k in e
                              if k.startswith("rewards/") and k.endswith("/mean"))
        drawn += [(k, k.removeprefix("rewards/").removesuffix("/mean") + " reward")
                  for k in names]
    return [(k, label) for k, label in drawn if series(steps, k)[0]]


def best_baseline(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The baseline with the lowest MAE (LABELS' name, its metrics)."""
    scored = [(n, report["baselines"][n]) for n in BASELINES
              if (report["baselines"].get(n) or {}).get("mae") is not None]
    name, metrics = min(scored, key=lambda pair: pair[1]["mae"])
    return LABELS[name], metrics


# --- drawing ------------------------------------------------------------------------------------


def matplotlib_figure() -> Callable[[], Any] | None:
    """A maker of empty 800x450 figures, or None when matplotlib is not installed. The Agg
    backend: files only, no display needed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def figure() -> Any:
        return Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")

    return figure


def _mark_alarms(ax: Any, alarms: list[dict[str, Any]]) -> None:
    for i, alarm in enumerate(alarms):
        ax.axvline(alarm.get("step", 0), color="#d62728", linestyle="--", linewidth=1,
                   label=f"alarm: {alarm.get('alarm')}" if i == 0 or alarm.get("alarm") not in
                   {a.get("alarm") for a in alarms[:i]} else None)


def draw_training(run: dict[str, Any], figure: Callable[[], Any]) -> list[tuple[str, str, Any]]:
    """(name, caption, figure) per training picture the run has data for."""
    steps, alarms, pictures = run["steps"], run["alarms"], []
    for panel in PANELS:
        drawn = panel_series(panel, steps)
        if not drawn:
            continue
        fig = figure()
        ax = fig.subplots()
        for n, (key, label) in enumerate(drawn):
            x, y = series(steps, key)
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label,
                    linewidth=2 if n == 0 else 1.2)
            if n == 0 and panel.band:
                low_key, high_key = panel.band[0], panel.band[-1]  # one key: a spread
                rows = [e for e in steps if all(isinstance(e.get(k), (int, float))
                                                for k in (key, low_key, high_key))]
                if rows:
                    spread = len(panel.band) == 1
                    low = [e[key] - e[low_key] if spread else e[low_key] for e in rows]
                    high = [e[key] + e[high_key] if spread else e[high_key] for e in rows]
                    ax.fill_between([e["step"] for e in rows], low, high, alpha=0.2,
                                    label="± std" if spread else "min..max")
        _mark_alarms(ax, alarms)
        if panel.limits:
            ax.set_ylim(*panel.limits)
        ax.set(title=panel.title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        pictures.append((panel.name, panel.title, fig))
    if run["dev"]:
        pictures.append(("dev", "Dev metrics at each evaluation (real generation)",
                         _draw_dev(run, figure)))
    return pictures


def _draw_dev(run: dict[str, Any], figure: Callable[[], Any]) -> Any:
    fig = figure()
    errors, rates = fig.subplots(1, 2)
    for ax, keys in ((errors, DEV_SERIES[:2]), (rates, DEV_SERIES[2:])):
        for key, label in keys:
            points = [(d["step"], d[key]) for d in run["dev"]
                      if isinstance(d.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
                ax.annotate(f"{points[-1][1]:.3f}", points[-1], textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        _mark_alarms(ax, run["alarms"])
        ax.set(xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    errors.set_title("dev MAE, RMSE (lower is better)")
    rates.set_title("dev coverage, format rate")
    rates.set_ylim(-0.02, 1.02)
    return fig


def draw_eval(label: str, report: dict[str, Any],
              figure: Callable[[], Any]) -> list[tuple[str, str, Any]]:
    """(name, caption, figure) per evaluation picture."""
    model = report["model"]
    keys = list(model["per_rating"])
    pictures = []
    if report.get("confusion"):
        fig = figure()
        ax = fig.subplots()
        rows = list(report["confusion"])
        columns = list(report["confusion"][rows[0]])
        counts = [[report["confusion"][r][c] for c in columns] for r in rows]
        shares = [[n / max(sum(row), 1) for n in row] for row in counts]
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", fontsize=9,
                        color="white" if shares[i][j] > 0.55 else "black")
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel="predicted rating (failed: no parsable answer)", ylabel="true rating",
               title=f"{label}: true vs predicted, counts (colour: share of the true rating)")
        fig.colorbar(image, ax=ax, shrink=0.8)
        pictures.append((f"{label}-confusion", "Confusion matrix: true vs predicted rating", fig))

    fig = figure()
    ax = fig.subplots()
    names = [("model", model), *((LABELS[n], report["baselines"][n]) for n in BASELINES
                                 if n in report["baselines"])]
    width = 0.8 / len(names)
    for i, (name, metrics) in enumerate(names):
        values = [(metrics["per_rating"].get(k) or {}).get("mae") for k in keys]
        ax.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(keys))],
               [float("nan") if v is None else v for v in values], width,
               label=name, color=MODEL if i == 0 else BASELINE_COLOURS[i % 5])
    ax.set_xticks(range(len(keys)), [f"{k}\nn={model['per_rating'][k]['n']}" for k in keys])
    ax.set(xlabel="true rating", ylabel="MAE",
           title=f"{label}: MAE per true rating, model beside each baseline")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=3)
    pictures.append((f"{label}-per-rating", "MAE per true rating, model and baselines", fig))

    fig = figure()
    ax = fig.subplots()
    buckets = list(model["histogram"])
    truth = model.get("truth_histogram") or {}
    ax.bar([x - 0.2 for x in range(len(buckets))], [model["histogram"][b] for b in buckets], 0.4,
           label="predictions", color=MODEL)
    ax.bar([x + 0.2 for x in range(len(buckets))], [truth.get(b, 0) for b in buckets], 0.4,
           label="truth", color="#7f7f7f")
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set(xlabel="rating (predictions rounded to the nearest bucket)", ylabel="examples",
           title=f"{label}: how often each rating is predicted, and how often it is true")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    pictures.append((f"{label}-histogram", "Histogram of predictions beside the truth's", fig))

    if report.get("readout") == "expected":
        fig = figure()
        ax = fig.subplots()
        values = [float(k) for k in keys]
        means = [model["per_rating"][k]["mean_prediction"] for k in keys]
        ax.plot(values, values, color="#7f7f7f", linestyle="--", label="perfect")
        ax.plot(values, [float("nan") if m is None else m for m in means], marker="o",
                color=MODEL, label="model: mean prediction")
        for v, m, k in zip(values, means, keys, strict=True):
            if m is not None:
                ax.annotate(f"n={model['per_rating'][k]['n']}", (v, m),
                            textcoords="offset points", xytext=(4, -12), fontsize=8)
        ax.set(xlabel="true rating", ylabel="mean predicted rating",
               title=f"{label}: calibration of the expected readout (mean prediction per true "
               "rating)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        pictures.append((f"{label}-calibration", "Calibration: mean prediction per true rating",
                         fig))
    return pictures


def draw_comparison(evals: list[tuple[str, dict[str, Any]]],
                    figure: Callable[[], Any]) -> tuple[str, str, Any]:
    """One set of bars: MAE, RMSE and MAE with failures of each evaluation, coverage on top."""
    fig = figure()
    ax = fig.subplots()
    metrics = (("mae", "MAE"), ("rmse", "RMSE"), ("mae_with_failures", "MAE w/ failures"))
    width = 0.8 / len(evals)
    for i, (label, report) in enumerate(evals):
        model = report["model"]
        xs = [x + (i - (len(evals) - 1) / 2) * width for x in range(len(metrics))]
        values = [model.get(key) for key, _ in metrics]
        bars = ax.bar(xs, [float("nan") if v is None else v for v in values], width,
                      label=f"{label} (coverage {model['coverage']:.0%})")
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    name, base = best_baseline(evals[0][1])
    ax.axhline(base["mae"], color="#7f7f7f", linestyle="--", linewidth=1,
               label=f"{name} MAE on {evals[0][0]}'s examples")
    ax.set_xticks(range(len(metrics)), [name for _, name in metrics])
    ax.set(ylabel="lower is better", title="Evaluations side by side")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return "compare", "Evaluations side by side", fig


# --- the page -----------------------------------------------------------------------------------


STYLE = """body{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{padding:2px 8px;text-align:right;
border-bottom:1px solid #ddd}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}.meta{color:#555}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def run_summary(run: dict[str, Any]) -> list[tuple[str, str]]:
    """What the page and the terminal say about the run, as (label, value)."""
    record = run["record"]
    facts = [("kind", record.get("kind")), ("recipe", record.get("recipe")),
             ("status", record.get("status")),
             ("steps", f"{record.get('global_step', len(run['steps']))}"
                       f"/{record.get('max_steps', '?')}"),
             ("wall time", f"{record['wall_time_s'] / 60:.1f} min"
              if isinstance(record.get("wall_time_s"), (int, float)) else None),
             ("device", record.get("device"))]
    warmup = record.get("warmup")
    if isinstance(warmup, dict):
        facts.append(("warm-up", f"{warmup.get('steps')} SFT steps, loss "
                                 f"{_num(warmup.get('loss_first'), 3)} -> "
                                 f"{_num(warmup.get('loss_last'), 3)}"))
    return [(k, str(v)) for k, v in facts if v is not None]


def dev_rows(run: dict[str, Any]) -> list[list[str]]:
    """Before / final dev metrics as table rows."""
    record = run["record"]
    rows = []
    for name, metrics in (("before training", record.get("dev_before")),
                          ("final", record.get("dev_metrics"))):
        if isinstance(metrics, dict):
            rows.append([name, str(metrics.get("n", "-")), _num(metrics.get("mae")),
                         _num(metrics.get("rmse")), _num(metrics.get("coverage"), 2),
                         _num(metrics.get("format_rate"), 2),
                         _num(metrics.get("mean_tokens"), 0)])
    return rows


DEV_HEADER = ["dev", "n", "MAE", "RMSE", "coverage", "format rate", "tokens"]
EVAL_HEADER = ["evaluation", "split", "scored", "readout", "coverage", "MAE", "RMSE",
               "MAE w/ failures", "best baseline", "its MAE"]


def eval_rows(evals: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for label, report in evals:
        model = report["model"]
        name, base = best_baseline(report)
        rows.append([label, str(report.get("split", "-")), str(report.get("scored", model["n"])),
                     str(report.get("readout", "-")), f"{model['coverage']:.1%}",
                     fmt_metric(model["mae"]), fmt_metric(model["rmse"]),
                     fmt_metric(model["mae_with_failures"]), name, fmt_metric(base["mae"])])
    return rows


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" width="{WIDTH}" height="{HEIGHT}" '
            f'alt="{html.escape(caption)}" data-file="{html.escape(path.name)}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>")


def write_page(out: Path, run: dict[str, Any], evals: list[tuple[str, dict[str, Any]]],
               training: list[tuple[Path, str]],
               evaluation: dict[str, list[tuple[Path, str]]],
               compare: tuple[Path, str] | None) -> Path:
    """report.html: one page, every picture inlined (it can be mailed alone)."""
    name = html.escape(run["name"])
    final = (run["record"].get("dev_metrics") or {}).get("mae")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>recone-lite report: {name}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Run {name}</h1>",
             f"<p class='meta'>{html.escape(' · '.join(f'{k} {v}' for k, v in run_summary(run)))}"
             f"<br>{html.escape(run['dir'])}</p>",
             f"<p>Final dev MAE <b id='final-dev-mae'>{_num(final)}</b></p>" if final is not None
             else "<p>No final dev metrics: the run has not finished.</p>"]
    if dev_rows(run):
        parts.append(_table(DEV_HEADER, dev_rows(run)))
    alarms = run["alarms"]
    parts.append("<h2>Alarms</h2>" + ("<ul>" + "".join(
        f"<li>step {a.get('step')}: <b>{html.escape(str(a.get('alarm')))}</b>: "
        f"{html.escape(str(a.get('message')))}</li>" for a in alarms) + "</ul>"
        if alarms else "<p>No alarm fired.</p>"))
    parts.append("<h2>Training</h2>")
    parts += [_figure_html(p, c) for p, c in training] or ["<p>No logged steps yet.</p>"]
    if evals:
        parts.append("<h2>Evaluation</h2>" + _table(EVAL_HEADER, eval_rows(evals)))
        if compare:
            parts.append(_figure_html(*compare))
        for label, report in evals:
            parts.append(f"<h3>{html.escape(label)}</h3><p class='meta'>"
                         f"{html.escape(str(report.get('predictions', '')))}</p>")
            base = [["model", report["model"]]] + [[LABELS[n], report["baselines"][n]]
                                                   for n in BASELINES if n in report["baselines"]]
            parts.append(_table(["", "coverage", "MAE", "RMSE", "MAE w/ failures"], [
                [b, f"{m['coverage']:.1%}", fmt_metric(m["mae"]), fmt_metric(m["rmse"]),
                 fmt_metric(m["mae_with_failures"])] for b, m in base]))
            parts += [_figure_html(p, c) for p, c in evaluation[label]]
    parts.append("</body></html>\n")
    page = out / HTML_NAME
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def write_report(run_dir: Path, eval_paths: list[Path], out: Path | None = None
                 ) -> dict[str, Any] | None:
    """Draw every picture into `out` (default RUN_DIR/report) and write report.html; None when
    matplotlib is not installed. Returns {"html", "pictures"}."""
    figure = matplotlib_figure()
    if figure is None:
        return None
    final = Path(out) if out is not None else Path(run_dir) / "report"
    # a report folder (report.html inside, nothing but LAYOUT) is replaced whole; any other
    # folder is refused, and so is an --out that holds the run or an eval file it reads
    check_inputs_outside(final, [(run_dir, "RUN_DIR"), *((p, "--eval") for p in eval_paths)])
    check_target(final, overwrite=True, marker=HTML_NAME, what="report folder", layout=LAYOUT)
    run = read_run(run_dir)
    labels = eval_labels(eval_paths)
    evals = [(label, read_eval(p)) for label, p in zip(labels, eval_paths, strict=True)]
    with atomic_path(final, marker=HTML_NAME, layout=LAYOUT) as folder:
        folder.mkdir()

        def save(name: str, caption: str, fig: Any) -> tuple[Path, str]:
            path = folder / f"{name.replace('/', '-')}.png"
            fig.savefig(path, dpi=DPI)
            return path, caption

        training = [save(*p) for p in draw_training(run, figure)]
        evaluation = {label: [save(*p) for p in draw_eval(label, report, figure)]
                      for label, report in evals}
        compare = save(*draw_comparison(evals, figure)) if len(evals) > 1 else None
        write_page(folder, run, evals, training, evaluation, compare)
    pictures = [p for p, _ in training] + [p for v in evaluation.values() for p, _ in v]
    pictures += [compare[0]] if compare else []
    return {"html": str(final / HTML_NAME), "pictures": [str(final / p.name) for p in pictures]}


# --- the terminal view (no matplotlib) ----------------------------------------------------------

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as one line of block characters, resampled to at most `width`.

    >>> sparkline([0, 1, 2, 3, 4, 5, 6, 7])
    '▁▂▃▄▅▆▇█'
    >>> sparkline([2.0, 2.0])
    '▄▄'
    """
    if not values:
        return ""
    if len(values) > width:
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [statistics.fmean(values[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    low, high = min(values), max(values)
    if high == low:
        return BLOCKS[3] * len(values)
    return "".join(BLOCKS[round((v - low) / (high - low) * (len(BLOCKS) - 1))] for v in values)


def print_terminal(run: dict[str, Any], evals: list[tuple[str, dict[str, Any]]]) -> None:
    """The report's series as rich tables and sparklines on stderr."""
    from rich.table import Table

    facts = Table(title=f"run {run['name']}", show_header=False)
    for key, value in run_summary(run):
        facts.add_row(key, value)
    console.print(facts)
    if dev_rows(run):
        console.print(_rows_table("dev metrics", DEV_HEADER, dev_rows(run)))
    steps = run["steps"]
    training = Table(title=f"training, {len(steps)} logged steps (alarms: "
                     f"{', '.join(str(a.get('step')) for a in run['alarms']) or 'none'})")
    for column in ("series", "first", "last", "min", "max", "per step"):
        training.add_column(column, justify="left" if column in ("series", "per step")
                            else "right")
    for panel in PANELS:
        for key, label in panel_series(panel, steps) + [(k, k) for k in panel.band
                                                        if series(steps, k)[0]]:
            values = series(steps, key)[1]
            training.add_row(label, *(f"{v:.4g}" for v in (values[0], values[-1], min(values),
                                                           max(values))), sparkline(values))
    for key, label in DEV_SERIES:
        values = [d[key] for d in run["dev"] if isinstance(d.get(key), (int, float))]
        if values:
            training.add_row(f"dev {label}", *(f"{v:.4g}" for v in (values[0], values[-1],
                             min(values), max(values))), sparkline(values))
    console.print(training)
    for alarm in run["alarms"]:
        console.print(f"alarm at step {alarm.get('step')}: {alarm.get('message')}",
                      highlight=False)
    for label, report in evals:
        console.rule(label)
        print_report(report)
        if report.get("confusion"):
            matrix = Table(title=f"{label}: true (rows) vs predicted (columns)")
            columns = list(next(iter(report["confusion"].values())))
            for column in ["true", *columns]:
                matrix.add_column(column, justify="right")
            for true, row in report["confusion"].items():
                matrix.add_row(true, *(str(row[c]) for c in columns))
            console.print(matrix)
        truth = report["model"].get("truth_histogram") or {}
        console.print(f"truth per rating: {'  '.join(f'{k}: {v}' for k, v in truth.items())}",
                      highlight=False)
    if len(evals) > 1:
        console.print(_rows_table("evaluations side by side", EVAL_HEADER, eval_rows(evals)))


def _rows_table(title: str, header: list[str] | tuple[str, ...], rows: list[list[str]]) -> Any:
    """A rich table of text rows: the first column left-aligned, the numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def report(run_dir: Path, eval_paths: list[Path], out: Path | None = None) -> dict[str, Any]:
    """The `report` command: the pictures and the page, or the terminal view and the hint."""
    written = write_report(run_dir, eval_paths, out)
    if written is None:
        run = read_run(run_dir)
        print_terminal(run, list(zip(eval_labels(eval_paths), map(read_eval, eval_paths),
                                     strict=True)))
        console.print(HINT, markup=False, highlight=False)
        return {"html": None, "pictures": [], "hint": HINT}
    info(f"report: {written['html']} ({len(written['pictures'])} pictures beside it)")
    return written

"""What a load run leaves behind: the summary printed at its end, and a report
folder (``results.json``, ``report.md``, three PNG plots) to commit with it.

Formatting iterates over whatever keys a :class:`LoadResult` holds, so a new
metric or criterion shows up without touching this module; the known ones get
labels and units here. Plots use ``Figure`` + ``FigureCanvasAgg`` rather than
pyplot, so no global state or GUI backend is involved and it is thread-safe.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import attrs
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from litejobs._metrics import LoadResult, percentile

# key -> (label, unit); unit is "" (count), "s", "jobs/s" or "%" (a 0..1 fraction).
_METRICS: dict[str, tuple[str, str]] = {
    "jobs_total": ("jobs", ""),
    "wall_time_s": ("wall time", "s"),
    "throughput_jobs_per_s": ("throughput", "jobs/s"),
    "mean_completion_s": ("completion mean", "s"),
    "p50_completion_s": ("completion p50", "s"),
    "p95_completion_s": ("completion p95", "s"),
    "p99_completion_s": ("completion p99", "s"),
    "busy_errors_surfaced": ("busy errors surfaced", ""),
    "busy_retries": ("busy retries", ""),
    "messages_sent": ("messages sent", ""),
    "messages_deleted": ("messages deleted", ""),
    "messages_redelivered": ("messages redelivered", ""),
    "deletion_rate": ("deletion rate", "%"),
    "hierarchy_integrity": ("hierarchy integrity", "%"),
    "parents_terminal": ("parents terminal", "%"),
    "queue_depth_mean": ("queue depth mean", ""),
    "queue_depth_peak": ("queue depth peak", ""),
    "worker_utilisation": ("worker utilisation", "%"),
    "worker_start_offsets_s": ("worker start offsets", "s"),
}
# The key figures the terminal summary shows, in this order, when present.
_SUMMARY_METRICS = (
    "jobs_total", "wall_time_s", "throughput_jobs_per_s", "p50_completion_s",
    "p95_completion_s", "p99_completion_s", "busy_retries", "messages_sent",
    "messages_deleted", "messages_redelivered", "queue_depth_mean", "queue_depth_peak",
    "worker_utilisation", "worker_start_offsets_s",
)  # fmt: skip
_CONFIG: dict[str, tuple[str, str]] = {
    "parents": ("parents", ""),
    "children": ("children", ""),
    "workers": ("workers", ""),
    "stagger_s": ("worker start stagger", "s"),
    "workload": ("workload", ""),
    "poll_interval_s": ("poll interval", "s"),
    "visibility_timeout_s": ("visibility timeout", "s"),
    "machine": ("machine", ""),
    "python": ("Python", ""),
    "sqlite": ("SQLite", ""),
}
_PLOTS = (
    ("throughput.png", "Jobs completed per second"),
    ("queue_depth.png", "Queue depth"),
    ("completion_times.png", "Completion times"),
)
_LIST_IN_FULL = 8  # longer lists are summarised as min / mean / max


@attrs.frozen
class ReportFiles:
    """The files :func:`write_report` wrote, so the caller can print or commit them."""

    json: pathlib.Path
    markdown: pathlib.Path
    plots: tuple[pathlib.Path, ...]


def format_summary(result: LoadResult) -> str:
    """Render the plain-text summary a ``litejobs load`` run prints as it ends."""
    held = sum(result.criteria.values())
    lines = [
        f"load scenario {result.scenario}: {'PASS' if result.passed else 'FAIL'}"
        f" ({held}/{len(result.criteria)} criteria held, started {result.started_at})",
        "",
        "criteria",
    ]
    lines += [f"  {_mark(ok)} {name}" for name, ok in result.criteria.items()]
    rows = [
        (_METRICS[key][0], _value(result.metrics[key], _METRICS[key][1]))
        for key in _SUMMARY_METRICS
        if key in result.metrics
    ]
    width = max((len(label) for label, _ in rows), default=0)
    lines += ["", "metrics"] + [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def markdown_report(result: LoadResult) -> str:
    """Render ``report.md``: configuration, criteria, every metric, the plots."""
    held = sum(result.criteria.values())
    verdict = "PASS" if result.passed else "FAIL"
    out = [
        f"# Load test: {result.scenario} ({result.started_at[:10]})",
        "",
        f"**{verdict}**: {held} of {len(result.criteria)} criteria held."
        f" Started {result.started_at}.",
        "",
        "## Configuration",
        "",
        *_table(("setting", "value"), _rows(result.config, _CONFIG)),
        "",
        "## Criteria",
        "",
        *_table(("", "criterion"), [(_mark(ok), f"`{n}`") for n, ok in result.criteria.items()]),
        "",
        "## Metrics",
        "",
        *_table(("metric", "value"), _rows(result.metrics, _METRICS, skip="attempts_distribution")),
    ]
    attempts = result.metrics.get("attempts_distribution")
    if isinstance(attempts, dict):
        total = sum(attempts.values())
        rows = [
            (str(k), str(n), _value(n / total if total else math.nan, "%"))
            for k, n in sorted(attempts.items(), key=lambda kv: _sort_key(kv[0]))
        ]
        out += [
            "",
            "## Attempts per database operation",
            "",
            *_table(("attempts", "operations", "share"), rows),
        ]
    out += ["", "## Plots", ""]
    for name, title in _PLOTS:
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)


def write_report(result: LoadResult, out_dir: pathlib.Path) -> ReportFiles:
    """Write ``results.json``, ``report.md`` and the three plots into ``out_dir``.

    ``out_dir`` (and its parents) is created if missing; existing files are replaced.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "report.md"
    md_path.write_text(markdown_report(result), encoding="utf-8")
    drawers = (_draw_throughput, _draw_queue_depth, _draw_completion_times)
    plots = []
    for (name, title), draw in zip(_PLOTS, drawers, strict=True):
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.1, right=0.88, bottom=0.13, top=0.9)  # constrained: 2x slower
        ax = fig.add_subplot()
        ax.set_title(f"{title} ({result.scenario})")
        draw(ax, result)
        fig.savefig(out_dir / name, format="png")
        plots.append(out_dir / name)
    return ReportFiles(json=json_path, markdown=md_path, plots=tuple(plots))


def _draw_throughput(ax: Axes, result: LoadResult) -> None:
    """Rate between consecutive samples, so a stall shows as a dip, not a flat average."""
    pairs = [(a, b) for a, b in itertools.pairwise(result.samples) if b.t > a.t]
    if not pairs:
        _no_data(ax, "no data (fewer than two samples)")
        return
    ts = [b.t for _, b in pairs]
    ax.step(ts, [(b.completed - a.completed) / (b.t - a.t) for a, b in pairs], where="pre")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(bottom=0)
    cumulative = ax.twinx()
    cumulative.plot([s.t for s in result.samples], [s.completed for s in result.samples], "C1--")
    cumulative.set_ylabel("completed (cumulative)", color="C1")


def _draw_queue_depth(ax: Axes, result: LoadResult) -> None:
    if not result.samples:
        _no_data(ax, "no data (no samples)")
        return
    ax.plot([s.t for s in result.samples], [s.queue_depth for s in result.samples], marker=".")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("messages in queue")
    ax.set_ylim(bottom=0)


def _draw_completion_times(ax: Axes, result: LoadResult) -> None:
    times = [t for t in result.completion_times_s if math.isfinite(t)]
    if not times:
        _no_data(ax, "no data (no completed jobs)")
        return
    ax.hist(times, bins=min(50, max(1, len(times) // 5)))
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        ax.axvline(percentile(times, q), color="k", linestyle=style, label=f"p{q}")
    ax.legend()
    ax.set_xlabel("completion time (s)")
    ax.set_ylabel("jobs")


def _no_data(ax: Axes, text: str) -> None:
    """An empty run still gets its plot file, so report.md never has a broken link."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _rows(
    values: dict[str, Any], known: dict[str, tuple[str, str]], skip: str = ""
) -> list[tuple[str, str]]:
    """Known keys first in their documented order, then any others under their own name."""
    keys = [k for k in known if k in values] + [k for k in values if k not in known]
    labelled = [(k, *known.get(k, (k, ""))) for k in keys if k != skip]
    return [(label, _value(values[k], unit)) for k, label, unit in labelled]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _value(value: Any, unit: str) -> str:
    """Format one figure; NaN, infinities, None and empty lists read "n/a"."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        if not value:
            return "n/a"
        if len(value) <= _LIST_IN_FULL:
            return ", ".join(_value(v, unit) for v in value)
        finite = [v for v in value if isinstance(v, int | float) and math.isfinite(v)]
        if not finite:
            return "n/a"
        stats = (min(finite), sum(finite) / len(finite), max(finite))
        low, mean, high = (_value(v, unit) for v in stats)
        return f"min {low}, mean {mean}, max {high} (of {len(value)})"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(str(kv[0])))
        return ", ".join(f"{k}: {_value(v, '')}" for k, v in items) or "n/a"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if not isinstance(value, int | float):
        return str(value)
    if unit == "%":
        text = f"{value * 100:.1f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else _number(value)
    return f"{text} {unit}" if unit else text


def _number(x: float) -> str:
    """About four significant digits, fixed-point, so columns of one unit line up."""
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}" if abs(x) < 100 else f"{x:,.1f}"


def _sort_key(key: str) -> tuple[int, float | str]:
    """Sort "2" before "10", and non-numeric keys after the numbers."""
    try:
        return (0, float(key))
    except ValueError:
        return (1, key)


def summary_markdown(
    runs: list[tuple[LoadResult, pathlib.Path]], page: pathlib.Path, command: str
) -> str:
    """Render one page comparing several runs (each with the directory its
    report was written to), with links relative to ``page``'s directory;
    ``command`` is what regenerates the page."""
    first = runs[0][0]
    config = first.config
    workload = config.get("workload")
    if workload == "synthetic":
        workload = f"synthetic (each job waits {_value(config.get('work_s'), 's')})"
    out = [
        f"# Load test results ({first.started_at[:10]})",
        "",
        "Generated by one command; run it again to regenerate this page and the",
        "reports and plots it links to:",
        "",
        f"    {command}",
        "",
        f"Machine: {config.get('machine', 'n/a')}; Python {config.get('python', 'n/a')}; "
        f"SQLite {config.get('sqlite', 'n/a')}. Workload: {workload}; poll interval "
        f"{_value(config.get('poll_interval'), 's')}; visibility timeout "
        f"{_value(config.get('visibility_timeout'), 's')}; a fresh database file per run.",
        "",
        *_table(
            (
                "run",
                "parents x children",
                "workers",
                "stagger",
                "jobs",
                "wall",
                "jobs/s",
                "p95",
                "busy retries",
                "criteria",
            ),
            [
                (
                    f"{r.scenario}, {r.config.get('workers')} workers",
                    f"{r.config.get('parents')} x {r.config.get('children')}",
                    str(r.config.get("workers")),
                    _value(r.config.get("stagger_s"), "s"),
                    str(r.metrics.get("jobs_total")),
                    _value(r.metrics.get("wall_time_s"), "s"),
                    _value(r.metrics.get("throughput_jobs_per_s"), ""),
                    _value(r.metrics.get("p95_completion_s"), "s"),
                    str(r.metrics.get("busy_retries")),
                    f"{_mark(r.passed)} {sum(r.criteria.values())}/{len(r.criteria)}",
                )
                for r, _ in runs
            ],
        ),
    ]
    for result, directory in runs:
        link = pathlib.Path(os.path.relpath(directory, page.parent)).as_posix()
        out += [
            "",
            f"## {result.scenario}, {result.config.get('workers')} workers",
            "",
            *_table(
                ("", "criterion"), [(_mark(ok), f"`{n}`") for n, ok in result.criteria.items()]
            ),
            "",
            f"Full report: [{link}/report.md]({link}/report.md), "
            f"data: [{link}/results.json]({link}/results.json).",
            "",
        ]
        out += [f"![{title}]({link}/{name})" for name, title in _PLOTS]
    return "\n".join(out) + "\n"

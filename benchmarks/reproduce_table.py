"""The reproduction table and plot: paper against ours, from the results of `lifelong reproduce`.

Reads the JSON lines that ``lifelong reproduce ROW`` appends (default: this repository's
``benchmarks/results/reproduce.jsonl``, wherever the script is run from), takes the latest
entry of every row, and writes

* ``reproduce_table.md``: a markdown table for the README, one line per test of every row file
  in ``lifelong/reproduce_rows/`` (rows without a result say "not run"): the published value, ours
  with its 95% confidence interval, whether ours is better, within the paper's interval or
  worse and the outcome (reached; not reached at the paper's iterations, or within the budget
  a row's schedule spans; stopped at the budget, still rising or levelled off), the minutes
  validation took to reach the paper's value on this machine (where validation has the test's
  shape), the iterations trained, the training
  wall-clock, the machine, and a reference to the row's list of differences from the paper,
  printed under the table;
* ``reproduce.png``: accuracy (MSE for sinusoids) against training time, one panel per task
  (dataset and episode shape): each row's validation curve (of its latest entry, where
  validation has the panel's shape) as a line, every test entry of every row as a point (of
  the row's setting as it reads today: :func:`of_setting`), the published values as dashed
  lines of the same colour.

Usage:
    python benchmarks/reproduce_table.py [--results FILE] [--out-dir DIR] [--run-only]
                                         [--beside FILE]

``--run-only`` leaves out the rows without a result (a results file of a few rows, such as
``benchmarks/results/gpu/reproduce_gpu.jsonl``); ``--beside`` adds a column with each test's
result in another results file (its latest record of the row: the GPU table beside the CPU's).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from lifelong import reproduce
from lifelong.pipeline.config import RunConfig
from lifelong.reproduce import Row, describe, load_row, row_names

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / reproduce.RESULTS
"""The repository's results file (``lifelong reproduce`` appends under its working directory)."""
OUT_DIR = RESULTS.parent
DATASET_ORDER = ("omniglot", "sinusoid", "miniimagenet")
UNCONFIRMED = "†"
LEGEND = (
    "Accuracy in % (sinusoids: MSE), mean ± 95% confidence interval over the test episodes "
    "of the row file. *vs paper*: within = the two differ by less than the paper's 95% "
    "interval (ours when the paper gives none), then the outcome; *still rising*: the best "
    "validation of the last quarter of the training time beats the best before it; *the "
    "budget its schedule spans*: the learning rate reached 0 at the time limit (`lr_horizon: "
    "budget`). *Time to "
    "paper*: training minutes until validation (the test's shape, other classes) first reached "
    "the paper's value, on the machine named; blank where the run validated no episodes of "
    "the test's shape (the ProtoNet Omniglot rows train on train + validation, as Snell et al. "
    "do; short runs stopped before their first validation). "
    + UNCONFIRMED
    + " = a published value not checked against the paper itself (read off a figure, or "
    "taken from a transcription). "
    "Iterations: trained / the paper's (a `-recipe-` row's: its own); *time limit* = stopped "
    "by the row's budget. Rows are run with `lifelong reproduce ROW`."
)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file, in order (an absent file has none)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SystemExit(f"error: {path}:{number} is not valid JSON: {err}") from None
    return records


def of_setting(record: dict[str, Any], row: Row, configured: bool = False) -> bool:
    """Whether ``record`` measured ``row``'s setting as the row file and the algorithm's
    defaults read today: the run's own config where the record holds it (records since
    0.2.0's carried Reptile state), read with the meaning it had in the version that made the
    record (:meth:`RunConfig.of_checkpoint`; e.g. Omniglot's ``vinyals`` split before 0.2.0),
    tested as the row tests (:data:`~lifelong.reproduce.TEST_OPTIONS`).
    An older record, without its config, cannot show the algorithm's defaults of its day: it
    counts only while the row has no record with a config (``configured``: it has one), and
    then only where the row file's options so read are today's."""
    version = record.get("lifelong", "0")
    if "config" in record:
        run = RunConfig.of_checkpoint({"config": record["config"], "version": version})
        tested = all(getattr(run, o) == getattr(row.train, o) for o in reproduce.TEST_OPTIONS)
        return tested and not reproduce.config_differences(row, run)
    state = {"config": row.train.to_dict(), "version": version}
    return not configured and RunConfig.of_checkpoint(state) == row.train


def of_row(records: list[dict[str, Any]], row: Row) -> list[dict[str, Any]]:
    """The records of ``row`` that measured its setting of today (:func:`of_setting`)."""
    mine = [r for r in records if r["row"] == row.name]
    configured = any("config" in r for r in mine)
    return [r for r in mine if of_setting(r, row, configured)]


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of every row."""
    return {r["row"]: r for r in records}


def ordered(rows: list[Row]) -> list[Row]:
    """Rows by dataset (Omniglot, sinusoids, miniImageNet, others), then by name."""
    rank = {name: i for i, name in enumerate(DATASET_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.train.dataset, len(rank)), r.name))


def _number(value: float | None, ci95: float | None, metric: str) -> str:
    return describe(value, ci95, metric).replace("%", "")


def _machine(record: dict[str, Any]) -> str:
    machine = record.get("machine") or {}
    if "gpu" in machine:
        return f"GPU: {machine['gpu']}"
    return f"CPU: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"


def _minutes(record: dict[str, Any]) -> str:
    seconds = record.get("train_seconds")
    if seconds is None:
        return "unknown"
    limit = record.get("time_limit_minutes")
    spent = f"{seconds / 60:.1f} min"
    return spent if limit is None else f"{spent} (limit {limit:g})"


def _validated(record: dict[str, Any], row: Row, test_name: str) -> bool:
    """Whether the record's validation curve has the shape of the row's test ``test_name``."""
    setting = next(t for t in row.tests if t.name == test_name)
    shape = setting.config(row.train).episode_shape("test")[:2]
    return bool(record.get("validation_curve")) and record.get("validation_shape") == list(shape)


def _outcome(record: dict[str, Any], result: dict[str, Any], row: Row) -> str:
    """``verdict: outcome``, computed again from the record (records written before the
    outcome existed, or before the row was marked a recipe, say it otherwise)."""
    if not result.get("verdict"):
        return ""
    curve = [tuple(point) for point in record.get("validation_curve") or []]
    found = reproduce.outcome(
        result["verdict"],
        record["iterations"],
        record["planned_iterations"],
        bool(record.get("stopped_by_time_limit")),
        reproduce.still_rising(curve, result["metric"]),
        row.iterations_of,
        row.budget_schedule,
    )
    return f"{result['verdict']}: {found}"


def _time_to_paper(record: dict[str, Any], row: Row, result: dict[str, Any]) -> str:
    if not _validated(record, row, result["name"]) or result["paper"]["value"] is None:
        return ""
    seconds = result.get("validation_seconds_to_paper")
    return "not reached" if seconds is None else f"{seconds / 60:.1f} min"


def _results(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """A record's test results by test name (none without a record)."""
    return {r["name"]: r for r in record["results"]} if record else {}


def _beside(record: dict[str, Any] | None, row: Row, result: dict[str, Any] | None) -> str:
    """A test's ``result`` in another ``record`` of the row, in one cell: ours, after how
    long, the time to the paper's value, the machine."""
    if record is None or result is None:
        return "not run"
    seconds = record.get("train_seconds")
    after = "" if seconds is None else f" after {seconds / 60:.1f} min"
    cell = f"{_number(result['mean'], result['ci95'], result['metric'])}{after}, "
    cell += f"{record['iterations']:,} its."
    to_paper = _time_to_paper(record, row, result)
    if to_paper:
        cell += f"; paper's value: {to_paper}"
    return f"{cell} ({_machine(record)})"


def render(
    records: list[dict[str, Any]],
    rows: list[Row],
    beside: list[dict[str, Any]] | None = None,
    beside_name: str = "",
) -> str:
    """The markdown table and the differences under it; with ``beside`` (the records of
    another results file, named ``beside_name``), a column of their latest result per test."""
    last, other = latest(records), latest(beside or [])
    extra = (f" The same row in `{beside_name}` |", "---|") if beside is not None else ("", "")
    header = (
        "| Row | Test | Paper | Ours | vs paper | Time to paper | Iterations | Training "
        "| Machine | Differs |" + extra[0],
        "|---|---|---|---|---|---|---|---|---|---|" + extra[1],
    )
    lines, notes = list(header), []
    for row in ordered(rows):
        record = last.get(row.name)
        ref = f"[{len(notes) + 1}]"
        found, found_beside = _results(record), _results(other.get(row.name))
        for test in row.tests:
            paper = test.paper
            published = (
                "not published"
                if paper.value is None
                else _number(paper.value, paper.ci95, row.metric)
                + (UNCONFIRMED if paper.status == "unconfirmed" else "")
            )
            cells = [f"`{row.name}`", test.name, published]
            result = found.get(test.name)
            if result is None:
                cells += ["not run", "", "", "", "", "", ref]
            else:
                iterations = f"{record['iterations']:,} / {record['planned_iterations']:,}"
                if record.get("stopped_by_time_limit"):
                    iterations += " (time limit)"
                cells += [
                    _number(result["mean"], result["ci95"], result["metric"]),
                    _outcome(record, result, row),
                    _time_to_paper(record, row, result),
                    iterations,
                    _minutes(record),
                    _machine(record),
                    ref,
                ]
            if beside is not None:
                cells.append(_beside(other.get(row.name), row, found_beside.get(test.name)))
            lines.append("| " + " | ".join(cells) + " |")
        details = list(row.differences) + (record.get("notes", []) if record else [])
        notes.append(f"{ref} `{row.name}` ({row.source}): " + "; ".join(details or ["none"]))
    return "\n".join(
        [LEGEND, "", *lines, "", "Differences from the papers:", "", *[f"- {n}" for n in notes]]
    )


def _task(row: Row, test_name: str) -> tuple[tuple[int, int, int], str]:
    """The panel of a test: its place (dataset, ways, shots) and title (sinusoids: one)."""
    setting = next(t for t in row.tests if t.name == test_name)
    dataset = row.train.dataset
    place = (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER),
             setting.ways or 0, setting.shots)  # fmt: skip
    if dataset == "sinusoid":
        return place, f"sinusoid, {setting.shots}-shot (MSE)"
    name = {"omniglot": "Omniglot", "miniimagenet": "miniImageNet"}.get(dataset, dataset)
    return place, f"{name} {setting.ways or row.train.ways}-way {setting.shots}-shot"


def _method(row: Row) -> str:
    """The method of a row: its title up to the first comma ("MAML", "ProtoNet"...)."""
    return row.title.split(",")[0]


def plot(records: list[dict[str, Any]], rows: list[Row], path: Path) -> Path:
    """Accuracy (MSE) against training minutes, one panel per task (module doc)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {row.name: row for row in rows}
    panels: dict[tuple[tuple[int, int, int], str], list[tuple[Row, str]]] = defaultdict(list)
    for row in ordered(rows):
        for test in row.tests:
            panels[_task(row, test.name)].append((row, test.name))
    names = sorted(panels)
    columns = min(4, len(names))
    grid = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(grid, columns, figsize=(4.2 * columns, 3.4 * grid), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({_method(row) for row in rows})
    palette = cycle if len(methods) <= len(cycle) else plt.get_cmap("tab20").colors
    colours = {method: palette[i % len(palette)] for i, method in enumerate(methods)}
    for ax, task in zip(axes.flat, names, strict=False):
        regression = task[1].startswith("sinusoid")
        scale = 1 if regression else 100
        span = max([r.budget_minutes for r, _ in panels[task]] + [1])
        for i, (row, test_name) in enumerate(panels[task]):
            method = _method(row)
            colour = cycle[i % len(cycle)] if regression else colours[method]
            label = f"{method}, {test_name}" if regression else method
            paper = next(t.paper for t in row.tests if t.name == test_name)
            if paper.value is not None:
                ax.axhline(scale * paper.value, color=colour, ls="--", lw=1)
            record = latest(records).get(row.name)
            if record is not None and _validated(record, row, test_name):
                minutes, values = zip(*record["validation_curve"], strict=True)
                ax.plot([m / 60 for m in minutes], [scale * v for v in values], color=colour,
                        lw=1, alpha=0.6)  # fmt: skip
                span = max(span, minutes[-1] / 60)
            points = sorted(
                (r["train_seconds"] / 60, res["mean"], res["ci95"] or 0.0)
                for r in of_row(records, row)
                if r.get("train_seconds") is not None
                for res in r["results"]
                if res["name"] == test_name
            )
            if points:
                x, y, ci = zip(*points, strict=True)
                ax.errorbar(x, [scale * v for v in y], yerr=[scale * c for c in ci], color=colour,
                            marker="o", ms=4, capsize=3, label=label)  # fmt: skip
                span = max(span, *x)
            else:
                ax.plot([], [], color=colour, ls="--", label=f"{label} (not run)")
        ax.set_xlim(0, 1.05 * span)
        ax.set(title=task[1], xlabel="training time (minutes)",
               ylabel="MSE" if regression else "test accuracy (%)")  # fmt: skip
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    unknown = sorted({r["row"] for r in records if r["row"] not in by_name})
    note = "dashed: published values; lines: our validation; points: our tests (95% CI)"
    if unknown:
        note += f"; not drawn (no row file): {', '.join(unknown)}"
    fig.suptitle(f"Reproductions: accuracy against training time ({note})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON-lines file")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where to write")
    parser.add_argument("--run-only", action="store_true", help="only the rows with a result")
    parser.add_argument("--beside", type=Path, help="a results file for a column beside ours")
    args = parser.parse_args(argv)
    records = read_records(args.results)
    beside = None if args.beside is None else read_records(args.beside)
    rows = [load_row(name) for name in row_names()]
    known = {row.name for row in rows}
    rows += [load_row(Path(r["row_file"])) for r in latest(records).values() if
             r["row"] not in known and Path(r.get("row_file") or "-").is_file()]  # fmt: skip
    if args.run_only:
        rows = [row for row in rows if row.name in latest(records)]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = args.out_dir / "reproduce_table.md"
    beside_name = "" if args.beside is None else args.beside.name
    table.write_text(render(records, rows, beside, beside_name) + "\n")
    print(f"{table}\n{plot(records, rows, args.out_dir / 'reproduce.png')}")


if __name__ == "__main__":
    main()

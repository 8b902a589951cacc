"""Reproduce published results: one row file per training, tested as the paper tests it.

A *row* (``lifelong/reproduce_rows/<row>.yaml``, package data) is one meta-training run of a
paper's table: the run's settings (``train:``, any :class:`~lifelong.pipeline.config.RunConfig`
options), the time budget it runs under here (``budget_minutes``), one or more test settings
(``evaluate:``), each with the published value it is compared with, and the ways in which our
setting differs from the paper (``differences:``), and optionally which checkpoint is tested
(``checkpoint: last``, for papers that report their final model; default ``best`` on
validation) and whether the training is a time-to-accuracy recipe rather than the paper's
setting (``recipe: true``; its iterations are then not the paper's)::

    row: maml-omniglot-5w1s
    title: MAML, Omniglot 5-way 1-shot
    source: Finn et al. 2017, Table 1
    budget_minutes: 60
    train: {algorithm: maml, dataset: omniglot, ways: 5, shots: 1, ...}
    evaluate:
      - name: 5-way 1-shot
        ways: 5
        shots: 1
        queries: 1
        episodes: 1000
        inner_steps: 3
        paper: {value: 0.987, ci95: 0.004, status: confirmed}
    differences: ["Class split: ...", ...]

``paper.status`` is ``confirmed`` (checked against the paper or a transcription of its
table), ``unconfirmed`` (e.g. read off a figure) or ``not published`` (``value: null``). One row
may carry several tests of one model: Snell et al. test the same 60-way 1-shot ProtoNet on 5-way
and on 20-way tasks; the sinusoid rows test after 1, 5 and 10 steps.

:func:`reproduce` trains the row into a run folder (resuming an interrupted one, and counting
the time of earlier sessions against the budget), tests it on the paper's number of fixed test
episodes (:func:`lifelong.pipeline.evaluate.evaluate`: mean and 95% confidence interval; the
run's checkpoint is loaded once for all its tests) and appends one JSON line to
``benchmarks/results/reproduce.jsonl`` under the working directory (or ``--results``): the row,
the paper's values, ours, iterations, training wall-clock, time limit, machine, versions, commit
(of a source checkout; ``None`` for an installed package) and the differences; the validation
accuracy against training time (``metrics.csv``), the time it took validation to reach the
paper's value where it is measured on the test's shape, and each test's :func:`outcome`
(reached; not reached at the paper's iterations; or stopped at the budget, still rising or not).
``benchmarks/reproduce_table.py`` turns the repository's file into the README's table and plot.

Importing this module stays light (no torch): training and testing import what they need when
they run, so that ``lifelong --help`` is fast.

Example:
    $ lifelong reproduce --list
    $ lifelong reproduce maml-omniglot-5w1s --data-root /data/omniglot      # train + test
    $ lifelong reproduce maml-omniglot-5w1s --run runs/maml-5w1s            # test a trained run
    >>> record = reproduce(load_row("sinusoid-maml"), time_limit=5)           # doctest: +SKIP
    >>> record["results"][2]["mean"]    # MSE after 10 steps (paper: 0.35)  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import os
import platform
import shlex
import subprocess
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from lifelong import __version__
from lifelong.files import atomic_write
from lifelong.pipeline.config import ConfigError, RunConfig

if TYPE_CHECKING:  # the heavy modules (torch) are imported where they are used
    from importlib.abc import Traversable

    import torch

    from lifelong.algorithms.base import Algorithm
    from lifelong.data.episodes import FixedEpisodes
    from lifelong.pipeline.trained import Trained

ROWS_DIR: Traversable = files("lifelong") / "reproduce_rows"
"""The row files: package data (a folder of the installed package, or of the checkout)."""
RESULTS = Path("benchmarks") / "results" / "reproduce.jsonl"
"""The default results file (relative: under the working directory), one JSON line per
reproduction."""
RUNS = Path("runs/reproduce")
"""The default parent of the run folders (relative to the working directory)."""
LEDGER = "reproduce.json"
"""The file in a run folder that counts the training sessions' wall-clock time."""
STATUSES = ("confirmed", "unconfirmed", "not published")
ROW_KEYS = (
    "row", "title", "source", "budget_minutes", "train", "evaluate", "differences", "checkpoint",
    "recipe",
)  # fmt: skip
REQUIRED_ROW_KEYS = ROW_KEYS[:6]
CHECKPOINTS = ("best", "last")
TEST_KEYS = ("name", "ways", "shots", "queries", "episodes", "inner_steps", "paper")
PAPER_KEYS = ("value", "ci95", "status", "note")


@dataclass(frozen=True)
class PaperValue:
    """A published result: ``value`` (accuracy as a fraction, or MSE), its 95% confidence
    half-width ``ci95`` (``None``: not given), ``status`` (one of :data:`STATUSES`) and a
    ``note`` (where it comes from, when that needs saying)."""

    value: float | None
    ci95: float | None
    status: str
    note: str = ""


@dataclass(frozen=True)
class RowTest:
    """One test of a row: episodes of ``ways`` (``None``: the run's; regression has none)
    classes, ``shots`` and ``queries``, ``episodes`` of them, ``inner_steps`` adaptation steps
    (``None``: the run's, or none for ProtoNets), compared with ``paper``."""

    name: str
    ways: int | None
    shots: int
    queries: int
    episodes: int
    inner_steps: int | None
    paper: PaperValue

    def config(self, train_config: RunConfig) -> RunConfig:
        """The run's config with this test's episode shape (validates the values)."""
        return train_config.override(
            test_ways=self.ways,
            test_shots=self.shots,
            test_queries=self.queries,
            test_episodes=self.episodes,
            eval_inner_steps=self.inner_steps,
        )


@dataclass(frozen=True)
class Row:
    """A row file, parsed and validated (see the module doc)."""

    name: str
    title: str
    source: str
    budget_minutes: float
    train: RunConfig
    tests: tuple[RowTest, ...]
    differences: tuple[str, ...]
    path: Path | Traversable
    """The row file: a path given by the user, or a file of :data:`ROWS_DIR`."""
    checkpoint: str = "best"
    """The checkpoint tested: ``best`` on validation (the last where the run validates
    nothing) or ``last``, as papers that report their final model."""
    recipe: bool = False
    """Whether ``train`` departs from the paper's setting to reach its value sooner (a
    time-to-accuracy recipe): its iterations are then the recipe's, not the paper's."""

    @property
    def iterations_of(self) -> str:
        """Whose iterations ``train.iterations`` are, for :func:`outcome`."""
        return "the recipe's" if self.recipe else "the paper's"

    @property
    def budget_schedule(self) -> bool:
        """Whether the learning-rate schedule ends with the time budget (``lr_horizon:
        budget``), for :func:`outcome`."""
        return self.train.lr_horizon == "budget"

    @property
    def metric(self) -> str:
        """``mse`` on regression data, else ``accuracy``."""
        from lifelong.data.registry import dataset_info

        return "mse" if dataset_info(self.train.dataset).regression else "accuracy"


# ------------------------------------------------------------------------------ row files
def row_names(rows_dir: Path | Traversable = ROWS_DIR) -> list[str]:
    """The names of the rows in ``rows_dir`` (default: the package's), sorted."""
    if not rows_dir.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in rows_dir.iterdir() if p.name.endswith(".yaml"))


def load_row(spec: str | Path, rows_dir: Path | Traversable = ROWS_DIR) -> Row:
    """The row named ``spec`` (a file of ``rows_dir``, default the package's rows), or the
    row file at path ``spec`` (``.yaml`` or ``.yml``).

    Raises:
        ConfigError: an unknown row (the message lists the rows), or a row file that is not
            valid (the message names the file and the offending key).
    """
    path: Path | Traversable = Path(spec)
    if Path(spec).suffix not in (".yaml", ".yml"):
        path = rows_dir / f"{spec}.yaml"
    if not path.is_file():
        names = row_names(rows_dir)
        close = difflib.get_close_matches(str(spec), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown row {str(spec)!r}{hint}; the rows are: {', '.join(names)}")
    where = f"row file {str(path)!r}"
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from err
    values = _mapping(values, where, ROW_KEYS, required=REQUIRED_ROW_KEYS)
    train_values = _mapping(values["train"], f"{where}: train", None)
    if "out" in train_values or "time_limit" in train_values:
        raise ConfigError(
            f"{where}: train sets no out or time_limit (the run folder and budget_minutes "
            "are the row's)"
        )
    train_config = RunConfig.from_dict(train_values, source=f"{where}: train")
    budget = values["budget_minutes"]
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
        raise ConfigError(f"{where}: budget_minutes must be a positive number, got {budget!r}")
    tests = values["evaluate"]
    if not isinstance(tests, list) or not tests:
        raise ConfigError(f"{where}: evaluate must be a list of one or more tests")
    parsed = tuple(_test(t, f"{where}: evaluate[{i}]", train_config) for i, t in enumerate(tests))
    differences = values.get("differences") or []
    if not isinstance(differences, list) or not all(isinstance(d, str) for d in differences):
        raise ConfigError(f"{where}: differences must be a list of strings")
    for key in ("row", "title", "source"):
        if not isinstance(values[key], str) or not values[key].strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    checkpoint = values.get("checkpoint", "best")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"{where}: checkpoint must be best or last, got {checkpoint!r}")
    recipe = values.get("recipe", False)
    if not isinstance(recipe, bool):
        raise ConfigError(f"{where}: recipe must be true or false, got {recipe!r}")
    return Row(
        name=values["row"],
        title=values["title"],
        source=values["source"],
        budget_minutes=float(budget),
        train=train_config,
        tests=parsed,
        differences=tuple(differences),
        path=path,
        checkpoint=checkpoint,
        recipe=recipe,
    )


def _mapping(
    values: Any, where: str, known: tuple[str, ...] | None, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``values`` as a mapping with only ``known`` keys (any when ``None``) and ``required``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    for key in values:
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    missing = [key for key in required if key not in values]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return values


def _test(values: Any, where: str, train_config: RunConfig) -> RowTest:
    from lifelong.pipeline.data import episode_count

    values = _mapping(values, where, TEST_KEYS, required=("name", "shots", "queries", "episodes"))
    paper = _mapping(values.get("paper"), f"{where}: paper", PAPER_KEYS, required=("status",))
    status = paper["status"]
    if status not in STATUSES:
        raise ConfigError(f"{where}: paper status must be one of {', '.join(STATUSES)}")
    value, ci95 = paper.get("value"), paper.get("ci95")
    if (value is None) != (status == "not published"):
        raise ConfigError(f"{where}: paper value is null exactly when its status is not published")
    for name, number in (("value", value), ("ci95", ci95)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)):
            raise ConfigError(f"{where}: paper {name} must be a number or null, got {number!r}")
    try:  # the values as the run's test settings: RunConfig checks (and coerces) them
        cfg = train_config.override(
            test_ways=values.get("ways"),
            test_shots=values["shots"],
            test_queries=values["queries"],
            test_episodes=values["episodes"],
            eval_inner_steps=values.get("inner_steps"),
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return RowTest(
        name=str(values["name"]),
        ways=None if values.get("ways") is None else cfg.test_ways,
        shots=cfg.episode_shape("test")[1],
        queries=cfg.episode_shape("test")[2],
        episodes=episode_count(cfg),
        inner_steps=None if values.get("inner_steps") is None else cfg.eval_inner_steps,
        paper=PaperValue(
            None if value is None else float(value),
            None if ci95 is None else float(ci95),
            status,
            str(paper.get("note") or ""),
        ),
    )


# ------------------------------------------------------------------------------ training
def training_time(run_dir: Path) -> tuple[float | None, str]:
    """Seconds of training that went into ``run_dir``, and how they were counted: from the
    ledger of :func:`reproduce` (a session killed without a chance to record its end counts up
    to its last checkpoint), else from the file times of ``config.yaml`` (written when training
    starts) and of the last checkpoint (a single session's wall-clock), else ``None``."""
    ledger = _read_ledger(run_dir)
    if ledger["sessions"]:
        return sum(_session_seconds(s, run_dir) for s in ledger["sessions"]), "ledger"
    config, last = run_dir / "config.yaml", run_dir / "last.json"
    if config.is_file() and last.is_file():
        return max(0.0, last.stat().st_mtime - config.stat().st_mtime), "file times"
    return None, "unknown"


def _read_ledger(run_dir: Path) -> dict[str, Any]:
    path = run_dir / LEDGER
    if not path.is_file():
        return {"sessions": []}
    try:
        ledger = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(ledger, dict) or not isinstance(ledger.get("sessions"), list):
        raise ConfigError(f"{str(path)!r} is not a training ledger (no sessions list)")
    return ledger


def _session_seconds(session: dict[str, Any], run_dir: Path) -> float:
    if session.get("seconds") is not None:
        return float(session["seconds"])
    last = run_dir / "last.json"  # the session died: count up to its last checkpoint
    end = last.stat().st_mtime if last.is_file() else session["started"]
    return max(0.0, end - session["started"])


def _write_ledger(run_dir: Path, ledger: dict[str, Any]) -> None:
    atomic_write(run_dir / LEDGER, (json.dumps(ledger, indent=1) + "\n").encode())


def _has_checkpoint(run_dir: Path, tag: str) -> bool:
    """:func:`lifelong.pipeline.checkpoint.has_checkpoint`, without importing torch."""
    return (run_dir / f"{tag}.json").is_file()


def checkpoint_step(run_dir: Path, tag: str = "last") -> int:
    """The iteration checkpoint ``tag`` of ``run_dir`` was saved at, read from its JSON index
    alone: its tensors are not loaded (:func:`lifelong.pipeline.checkpoint.load_checkpoint`
    loads and checks them when the run is resumed or tested).

    Raises:
        CheckpointError: no such checkpoint, or an index without a step.
    """
    from lifelong.pipeline.checkpoint import CheckpointError

    index = run_dir / f"{tag}.json"
    try:
        return int(json.loads(index.read_text())["state"]["step"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(index)!r} is unreadable: {err!r}") from err


@dataclass(frozen=True)
class Training:
    """How the training of a reproduction went: the run folder, the last iteration, the
    seconds of training (``None``: unknown), how they were counted, and whether the time limit
    ended training before the row's iterations."""

    run_dir: Path
    iterations: int
    seconds: float | None
    seconds_from: str
    stopped_by_time_limit: bool


def train_row(
    row: Row,
    run_dir: Path,
    time_limit: float,
    device: str | None = None,
    data_root: str | None = None,
    progress: bool = True,
) -> Training:
    """Train ``row`` into ``run_dir`` for at most ``time_limit`` minutes in all: a folder that
    holds a checkpoint is resumed, with the time of its earlier sessions deducted (nothing is
    trained when the budget is spent)."""
    from lifelong.pipeline.data import load_data
    from lifelong.pipeline.train import train

    cfg = row.train.override(out=str(run_dir), device=device, data_root=data_root)
    resume = _has_checkpoint(run_dir, "last")
    ledger = _read_ledger(run_dir) if resume else {"sessions": []}
    died = [s for s in ledger["sessions"] if s.get("seconds") is None]
    for session in died:  # killed before it could record its end: count it once, now
        session["seconds"] = _session_seconds(session, run_dir)
    if died:
        _write_ledger(run_dir, ledger)
    spent = sum(session["seconds"] for session in ledger["sessions"])
    remaining = time_limit * 60 - spent
    if remaining > 0:
        load_data(cfg)  # missing data fails here, before the run folder is touched
        session = {"started": time.time(), "seconds": None, "time_limit_minutes": time_limit}
        session["start_step"] = checkpoint_step(run_dir, "last") if resume else 0
        ledger["row"] = row.name
        ledger["sessions"].append(session)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_ledger(run_dir, ledger)
        start = time.monotonic()
        try:
            train(cfg.override(time_limit=remaining / 60), resume=resume, progress=progress)
        finally:
            session["seconds"] = time.monotonic() - start
            _write_ledger(run_dir, ledger)
    step = checkpoint_step(run_dir, "last")
    seconds, counted = training_time(run_dir)
    return Training(run_dir, step, seconds, counted, step < cfg.iterations)


# ------------------------------------------------------------------------------ the record
def validation_curve(run_dir: Path) -> list[tuple[float, float]]:
    """``(seconds of training, validation metric)`` of every validation of a run (the rows of
    its ``metrics.csv`` that have a clock: runs before the clock column have none)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val" and r.get("seconds")]
    return [(float(r["seconds"]), float(r["metric"])) for r in rows]


def _reaches(value: float, target: float, metric: str) -> bool:
    return value >= target if metric == "accuracy" else value <= target


def time_to(curve: list[tuple[float, float]], target: float, metric: str) -> float | None:
    """The seconds of training after which ``curve`` first reached ``target`` (``None``:
    never)."""
    return next((t for t, value in curve if _reaches(value, target, metric)), None)


def still_rising(curve: list[tuple[float, float]], metric: str) -> bool | None:
    """Whether the best validation of the last quarter of a curve's time beats the best
    before it (``None``: too few validations to tell)."""
    if len(curve) < 4:
        return None
    cut = 0.75 * curve[-1][0]
    sign = 1.0 if metric == "accuracy" else -1.0
    before = [sign * v for t, v in curve if t <= cut]
    late = [sign * v for t, v in curve if t > cut]
    if not before or not late:
        return None
    return max(late) > max(before)


def outcome(
    verdict_: str | None,
    iterations: int,
    planned: int,
    stopped: bool,
    rising: bool | None,
    whose: str = "the paper's",
    budget_schedule: bool = False,
) -> str | None:
    """``reached`` (better or within the paper), ``not reached at the paper's iterations``, or
    ``stopped at the budget (x% of the paper's iterations; still rising | levelled off)`` (a
    run ``stopped`` by its time limit after ``iterations`` of the ``planned``; ``rising``:
    :func:`still_rising`); ``None`` without a published value. ``whose`` iterations the
    ``planned`` are: :attr:`Row.iterations_of`. A run whose learning-rate schedule ends with
    the budget (``budget_schedule``: ``lr_horizon: budget``) and stops there finished its
    schedule: ``not reached within the budget its schedule spans``."""
    if verdict_ is None:
        return None
    if verdict_ in ("better", "within"):
        return "reached"
    if not stopped:
        return f"not reached at {whose} iterations"
    if budget_schedule:
        return "not reached within the budget its schedule spans"
    share = 100 * iterations / planned
    trend = {True: "; still rising", False: "; levelled off", None: ""}[rising]
    return f"stopped at the budget ({share:.2g}% of {whose} iterations{trend})"


def verdict(ours: float, ours_ci: float | None, paper: PaperValue, metric: str) -> str | None:
    """``better``, ``within`` or ``worse`` than the paper: within when the values differ by
    less than the paper's 95% interval (ours when the paper gives none); better is higher
    accuracy or lower MSE. ``None`` when there is no published value."""
    if paper.value is None:
        return None
    tolerance = paper.ci95 if paper.ci95 is not None else (ours_ci or 0.0)
    gain = (ours - paper.value) * (1 if metric == "accuracy" else -1)
    if abs(gain) <= tolerance:
        return "within"
    return "better" if gain > 0 else "worse"


def machine(device: torch.device) -> dict[str, Any]:
    """The machine of a result: CPU model, its vector instructions that decide PyTorch's
    speed (AVX2, AVX-512, AVX-512 bf16), the cores this process may use, torch's threads,
    and the GPU's name when the device is one."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line for line in lines if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
        present = next(
            (set(x.split(":", 1)[1].split()) for x in lines if x.startswith("flags")), set()
        )
        flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in present]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def source_checkout() -> Path | None:
    """The git checkout this package is imported from (``lifelong/`` of its work tree), or
    ``None``: an installed package (in site-packages, even of a virtualenv inside some other
    checkout) has no commit of its own."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


def git_commit() -> tuple[str | None, bool | None]:
    """The source checkout's commit and whether tracked files differ from it (``None``: not
    a git checkout, or no git)."""
    root = source_checkout()
    if root is None:
        return None, None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head, bool(status.strip())


TEST_OPTIONS = ("test_rotations",)
"""Options of a row's ``train`` section that only its tests read: a run is tested with the
row's values whatever it trained with (``--run``)."""


def config_differences(row: Row, saved: RunConfig) -> dict[str, list[Any]]:
    """Options (other than :data:`lifelong.pipeline.train.RESUMABLE` and
    :data:`TEST_OPTIONS`) in which a run's config (as its checkpoint reads) differs from the
    row's with the algorithm's defaults filled in: ``{option: [row's value, run's value]}``."""
    from lifelong.pipeline.factory import resolve_config
    from lifelong.pipeline.train import RESUMABLE

    wanted = resolve_config(row.train)
    return {
        f.name: [getattr(wanted, f.name), getattr(saved, f.name)]
        for f in fields(RunConfig)
        if f.name not in RESUMABLE + TEST_OPTIONS
        and getattr(wanted, f.name) != getattr(saved, f.name)
    }


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, in one write (lines of concurrent runs do not mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=_plain) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else str(value)


def reproduce(
    row: Row,
    out: Path | None = None,
    time_limit: float | None = None,
    device: str | None = None,
    data_root: str | None = None,
    results: Path | None = RESULTS,
    run: Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train ``row`` (into ``out``, default ``runs/reproduce/ROW``, for ``time_limit`` minutes in
    all, default the row's budget), or take the trained run folder ``run`` as it is; test it on
    every test setting of the row; append the record to ``results`` (default
    ``benchmarks/results/reproduce.jsonl`` under the working directory; ``None``: nowhere) and
    return it. ``data_root`` is ignored by generated datasets (strokes, sinusoids), so that one
    command line serves every row. The run's checkpoint is loaded once, for all the tests."""
    import torch

    from lifelong.data.registry import DATASETS
    from lifelong.pipeline.device import resolve_device

    if not DATASETS[row.train.dataset].takes_root:
        data_root = None
    if run is not None:
        if out is not None or time_limit is not None:
            raise ConfigError("--run tests a trained run folder: leave out --out and --time-limit")
        training, budget = _trained(run)
    else:
        if time_limit is not None and not time_limit > 0:
            raise ConfigError(f"--time-limit must be positive, got {time_limit}")
        budget = time_limit or row.budget_minutes
        training = train_row(row, out or RUNS / row.name, budget, device, data_root, progress)
    tested = load_tested(row, training.run_dir)  # once for all the tests
    drift = {} if run is None else config_differences(row, tested.config)
    used = resolve_device(device or tested.config.device)
    curve = validation_curve(training.run_dir)
    rising = still_rising(curve, row.metric)
    validated = tested.config.episode_shape("val")[:2]
    tests = []
    for setting in row.tests:
        test = _test_run(setting, tested, used, data_root)
        test["outcome"] = outcome(
            test["verdict"],
            training.iterations,
            row.train.iterations,
            training.stopped_by_time_limit,
            rising,
            row.iterations_of,
            row.budget_schedule,
        )
        same_shape = setting.config(tested.config).episode_shape("test")[:2] == validated
        paper = setting.paper.value
        reached = time_to(curve, paper, row.metric) if same_shape and paper is not None else None
        test["validation_seconds_to_paper"] = None if reached is None else round(reached, 1)
        tests.append(test)
    notes = [
        f"the run differs from the row in {k}: row {a!r}, run {b!r}" for k, (a, b) in drift.items()
    ]
    if training.stopped_by_time_limit:
        notes.append(
            f"stopped by the time limit at iteration {training.iterations} "
            f"of {row.train.iterations}"
        )
    commit, dirty = git_commit()
    record = {
        "row": row.name,
        "title": row.title,
        "source": row.source,
        "row_file": str(row.path),
        "dataset": row.train.dataset,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": tests,
        "mode": "test only (--run)" if run is not None else "train and test",
        "iterations": training.iterations,
        "planned_iterations": row.train.iterations,
        "tested_iteration": tested.step,
        "train_seconds": None if training.seconds is None else round(training.seconds, 1),
        "train_seconds_from": training.seconds_from,
        "time_limit_minutes": budget,
        "stopped_by_time_limit": training.stopped_by_time_limit,
        "validation_shape": list(validated),
        "validation_curve": [[round(t, 1), v] for t, v in curve],
        "device": used.type,
        "machine": machine(used),
        "torch": torch.__version__,
        "lifelong": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "run_dir": str(training.run_dir),
        "differences": list(row.differences),
        "notes": notes,
        "config_differences": drift,
        "config": tested.config.to_dict(),
        "command": command,
    }
    if results is not None:
        append_jsonl(results, record)
    return record


def _trained(run: Path) -> tuple[Training, float | None]:
    """How an existing run folder was trained, and its time limit (minutes; ``None``: none)."""
    if not _has_checkpoint(run, "last"):
        raise ConfigError(f"{str(run)!r} is not a trained run folder (no last checkpoint)")
    saved = RunConfig.from_yaml(run / "config.yaml")
    step = checkpoint_step(run, "last")
    seconds, counted = training_time(run)
    sessions = _read_ledger(run)["sessions"]
    budget = sessions[-1].get("time_limit_minutes") if sessions else saved.time_limit
    return Training(run, step, seconds, counted, step < saved.iterations), budget


def load_tested(row: Row, run_dir: Path) -> Trained:
    """The run folder's checkpoint that ``row`` tests (``row.checkpoint``), with the row's
    test options (:data:`TEST_OPTIONS`) over the run's config."""
    from lifelong.pipeline.trained import load_trained

    tested = load_trained(run_dir, row.checkpoint)
    tested.config = replace(
        tested.config, **{name: getattr(row.train, name) for name in TEST_OPTIONS}
    )
    return tested


def prepared_test(
    setting: RowTest, tested: Trained, device: torch.device, data_root: str | None
) -> tuple[Algorithm, FixedEpisodes, int]:
    """What a run is tested with on ``setting`` (as ``evaluate_run`` tests a run folder): the
    algorithm rebuilt for the test's settings (test ways and adaptation steps) from the weights
    in memory, on ``device``; the setting's fixed episodes (seed 0: every run of the row sees
    the same tasks); and the number of episodes per batch, checked against the memory a batch
    needs."""
    from lifelong.pipeline.data import episode_count, load_data
    from lifelong.pipeline.evaluate import checked_batch_size
    from lifelong.pipeline.factory import build_algorithm

    cfg = tested.config.override(
        test_ways=setting.ways,
        test_shots=setting.shots,
        test_queries=setting.queries,
        eval_inner_steps=setting.inner_steps,
        data_root=data_root,
    )
    algorithm = build_algorithm(cfg, tested.facts)
    algorithm.load_state_dict(tested.algorithm.state_dict())
    algorithm = algorithm.eval().to(device)
    data = load_data(cfg)  # the last dataset loaded stays in memory: loaded once per row
    tested.check_data(data.facts)
    n = setting.episodes or episode_count(cfg)
    fixed = data.sampler("test", seed=0).fixed(n, seed=0)
    options = f"the episode shape (`test_ways` {cfg.episode_shape('test')[0]}, `test_queries`)"
    return algorithm, fixed, checked_batch_size(algorithm, fixed, device, options)


def _test_run(
    setting: RowTest, tested: Trained, device: torch.device, data_root: str | None
) -> dict[str, Any]:
    """Test the loaded run on ``setting`` (:func:`prepared_test`) and judge it against the
    paper."""
    from lifelong.pipeline.evaluate import evaluate

    algorithm, fixed, batch_size = prepared_test(setting, tested, device, data_root)
    result = evaluate(algorithm, fixed, device, split="test", batch_size=batch_size)
    paper = setting.paper
    return {
        "name": setting.name,
        **result.to_dict(),
        "paper": {"value": paper.value, "ci95": paper.ci95, "status": paper.status},
        "verdict": verdict(result.mean, result.ci95, paper, result.metric),
    }


def describe(value: float | None, ci95: float | None, metric: str) -> str:
    """``98.70% ± 0.40%`` (accuracy) or ``0.350 ± 0.020`` (MSE); ``not published`` for no
    value."""
    if value is None:
        return "not published"
    if metric == "accuracy":
        ci = "" if ci95 is None else f" ± {100 * ci95:.2f}%"
        return f"{100 * value:.2f}%{ci}"
    ci = "" if ci95 is None else f" ± {ci95:.3f}"
    return f"{value:.3f}{ci}"


# ------------------------------------------------------------------------------ the command
def reproduce_command(
    row: Annotated[
        str | None,
        typer.Argument(metavar="ROW", help="A row name (see --list) or a row file (.yaml)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/reproduce/ROW); a run there is resumed."),
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Training minutes in all (default: the row's budget).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: the row's).")
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option(help="Dataset folder (default: the cache's); generated data ignores it."),
    ] = None,
    results: Annotated[
        Path,
        typer.Option(help="JSON-lines file the result is appended to (relative: to the cwd)."),
    ] = RESULTS,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Test and record this trained run folder; no training."),
    ] = None,
    list_rows: Annotated[bool, typer.Option("--list", help="List the rows and stop.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Reproduce a row of a paper's table: train (resumable, within the row's time budget),
    test on the paper's number of episodes with 95% CI, append the result to --results."""
    if list_rows:
        for name in row_names():
            spec = load_row(name)
            papers = "; ".join(
                f"{t.name} {describe(t.paper.value, t.paper.ci95, spec.metric)}" for t in spec.tests
            )
            typer.echo(
                f"{name:<28} {spec.budget_minutes:>5.0f} min  {spec.title}  (paper: {papers})"
            )
        return
    if row is None:
        raise ConfigError("give a ROW to reproduce (see `lifelong reproduce --list`)")
    spec = load_row(row)
    flags = {"--out": out, "--time-limit": time_limit, "--device": device}
    flags |= {"--data-root": data_root, "--results": None if results == RESULTS else results}
    flags["--run"] = run
    given = [str(x) for flag, value in flags.items() if value is not None for x in (flag, value)]
    command = shlex.join(["lifelong", "reproduce", row, *given])
    record = reproduce(
        spec, out, time_limit, device, data_root, results, run, progress=not quiet, command=command
    )
    for r in record["results"]:
        paper = describe(r["paper"]["value"], r["paper"]["ci95"], r["metric"])
        verdict_ = f": {r['verdict']}, {r['outcome']}" if r["verdict"] else ""
        typer.echo(
            f"{spec.name} {r['name']}: {describe(r['mean'], r['ci95'], r['metric'])} "
            f"(paper {paper}{verdict_})"
        )
    typer.echo(f"{record['iterations']} iterations in {record['run_dir']}; recorded in {results}")

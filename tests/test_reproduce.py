"""`lifelong reproduce`: every row file is valid and builds its model; tiny strokes and sinusoid
rows train, test and append a well-formed JSON line (and resume, within their budget); --run
tests an existing run, loading its checkpoint once; results go under the working directory by
default; the rows are package data and the commit is ``None`` outside a checkout; the table
script renders results and rows not run; one-line errors for an unknown row, a bad row file and
missing miniImageNet data."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_strokes import STROKES_DATA

import lifelong
import lifelong.reproduce as reproduce_module
from lifelong.cli import main
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts
from lifelong.pipeline.factory import build_algorithm, resolve_config
from lifelong.reproduce import (
    LEDGER,
    RESULTS,
    ROWS_DIR,
    PaperValue,
    git_commit,
    load_row,
    outcome,
    reproduce,
    row_names,
    still_rising,
    time_to,
    training_time,
    verdict,
)

TINY_ROW: dict[str, Any] = {
    "row": "tiny-strokes",
    "title": "ProtoNet, strokes 3-way 1-shot",
    "source": "a test row",
    "budget_minutes": 1,
    "train": {
        "algorithm": "protonet", "dataset": "strokes", "dataset_options": STROKES_DATA, "ways": 3,
        "shots": 1, "queries": 2, "meta_batch": 2, "hidden": [8], "iterations": 4,
        "val_every": 2, "val_episodes": 4, "checkpoint_every": 2,
    },
    "evaluate": [
        {"name": "3-way 1-shot", "ways": 3, "shots": 1, "queries": 2, "episodes": 10,
         "paper": {"value": 0.9, "ci95": 0.05, "status": "confirmed"}},
        {"name": "2-way 1-shot", "ways": 2, "shots": 1, "queries": 3, "episodes": 6,
         "paper": {"value": None, "status": "not published"}},
    ],
    "differences": ["strokes, not a paper's data"],
}  # fmt: skip
FACTS = {  # what the datasets' loaders report, without loading them
    "omniglot": DataFacts(
        "omniglot", False, (1, 28, 28), {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
    ),
    "miniimagenet": DataFacts(
        "miniimagenet", False, (3, 84, 84), {"train": 64, "val": 16, "test": 20}
    ),
    "sinusoid": DataFacts("sinusoid", regression=True),
}
EXPECTED_ROWS = {
    *(f"maml-omniglot-{s}" for s in ("5w1s", "5w5s", "20w1s", "20w5s")),
    "maml-recipe-omniglot-5w1s", "maml-bf16-omniglot-5w1s", "protonet-recipe-omniglot-5shot",
    "maml-mlp-omniglot-5w1s", "maml-mlp-omniglot-5w5s",
    "protonet-omniglot-1shot", "protonet-omniglot-5shot",
    *(f"{a}-omniglot-{s}" for a in ("fomaml", "anil", "metasgd", "reptile")
      for s in ("5w1s", "20w1s")),
    "sinusoid-maml", "sinusoid-pretrained",
    *(f"{a}-miniimagenet-5w{k}s" for a in ("maml", "protonet") for k in (1, 5)),
}  # fmt: skip


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``lifelong ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def row_file(tmp_path: Path, changes: dict[str, Any] | None = None, **train: Any) -> Path:
    values = {**TINY_ROW, **(changes or {}), "train": {**TINY_ROW["train"], **train}}
    path = tmp_path / f"{values['row']}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------ row files
def test_every_row_file_is_valid_and_builds_its_model() -> None:
    assert set(row_names()) >= EXPECTED_ROWS
    for name in row_names():
        row = load_row(name)
        assert row.name == name and row.path == ROWS_DIR / f"{name}.yaml"
        assert row.budget_minutes > 0 and row.title and row.source
        assert row.train.out is None and row.train.time_limit is None
        assert row.recipe == ("-recipe-" in name)  # a recipe's iterations are not the paper's
        for test in row.tests:
            cfg = test.config(row.train)
            build_algorithm(cfg, FACTS[cfg.dataset])  # settings fit together and fit the data
            assert test.episodes == {"miniimagenet": 600, "sinusoid": 600}.get(cfg.dataset, 1000)
            paper = test.paper
            if paper.value is None:
                assert paper.status == "not published"
            elif cfg.dataset == "sinusoid":
                assert 0 < paper.value < 5 and test.inner_steps in (1, 5, 10)
            else:
                assert 0.4 < paper.value <= 1 and (paper.ci95 is None or paper.ci95 < 0.02)


def test_the_rows_are_package_data_and_the_commit_needs_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Path(str(ROWS_DIR)) == Path(lifelong.__file__).parent / "reproduce_rows"
    assert all((ROWS_DIR / f"{name}.yaml").is_file() for name in row_names())
    commit, _ = git_commit()  # this checkout (when git is installed)
    assert commit is None or len(commit) == 40
    installed = tmp_path / "site-packages" / "lifelong" / "reproduce.py"
    monkeypatch.setattr(reproduce_module, "__file__", str(installed))
    assert git_commit() == (None, None)


def test_the_paper_settings_are_kept() -> None:
    maml = load_row("maml-omniglot-20w1s").train
    assert (maml.ways, maml.meta_batch, maml.inner_lr, maml.inner_steps) == (20, 16, 0.1, 5)
    pretrained, meta = load_row("sinusoid-pretrained"), load_row("sinusoid-maml")
    assert pretrained.train.inner_steps == 0 and meta.train.inner_steps == 1
    assert pretrained.train.override(inner_steps=1) == meta.train  # the one difference
    proto = load_row("protonet-omniglot-1shot")
    assert [(t.ways, t.shots) for t in proto.tests] == [(5, 1), (20, 1)]
    assert (proto.train.ways, proto.train.train_split) == (60, "trainval")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget": 3}, "unknown key 'budget' (did you mean 'budget_minutes'?)"),
        ({"budget_minutes": 0}, "budget_minutes must be a positive number, got 0"),
        ({"checkpoint": "final"}, "checkpoint must be best or last, got 'final'"),
        ({"recipe": "yes"}, "recipe must be true or false, got 'yes'"),
        ({"train": {"wayz": 5}}, "unknown option 'wayz' (did you mean 'ways'?)"),
        ({"train": {"out": "x"}}, "train sets no out or time_limit"),
        ({"evaluate": []}, "evaluate must be a list of one or more tests"),
        ({"evaluate": [{"name": "a", "shots": 1, "queries": 2, "episodes": 3, "paper": {
            "value": None, "status": "confirmed"}}]}, "null exactly when"),
        ({"evaluate": [{"name": "a", "shots": 1, "queries": 2, "episodes": 3, "paper": {
            "value": 0.5, "status": "guessed"}}]}, "status must be one of confirmed"),
        ({"evaluate": [{"name": "a", "shots": 1.5, "queries": 2, "episodes": 3, "paper": {
            "value": 0.5, "status": "confirmed"}}]}, "evaluate[0]: test_shots must be an integer"),
    ],
)  # fmt: skip
def test_bad_row_files_are_named(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    values = {**TINY_ROW, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_row(path)


def test_an_unknown_row_is_one_line_listing_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "reproduce", "maml-omniglot-5w1x")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: unknown row 'maml-omniglot-5w1x' (did you mean 'maml-omniglot-5w1s'?)"
    )
    assert "the rows are: anil-omniglot-20w1s, " in err and "sinusoid-maml" in err
    code, out, _ = cli(capsys, "reproduce", "--list")
    assert code == 0 and len(out.splitlines()) == len(row_names())
    assert "maml-omniglot-5w1s" in out and "98.70% ± 0.40%" in out and "not published" in out


def test_miniimagenet_rows_fail_in_one_line_without_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for row in ("maml-miniimagenet-5w1s", "protonet-miniimagenet-5w5s"):
        code, _, err = cli(capsys, "reproduce", row, "--data-root", tmp_path / "none", "--out",
                           tmp_path / row, "--results", tmp_path / "r.jsonl")  # fmt: skip
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(f"error: miniImageNet not found in {tmp_path / 'none'}")
        assert not (tmp_path / row).exists() and not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------ runs
def test_a_tiny_row_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out, results = row_file(tmp_path), tmp_path / "run", tmp_path / "results.jsonl"
    code, stdout, err = cli(capsys, "reproduce", path, "--out", out, "--results", results,
                            "--quiet")  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    assert (
        lines[0].startswith("tiny-strokes 3-way 1-shot: ") and "(paper 90.00% ± 5.00%" in lines[0]
    )
    assert "(paper not published)" in lines[1] and lines[2].startswith("4 iterations in ")
    [record] = jsonl(results)
    assert record["row"] == "tiny-strokes" and record["row_file"] == str(path)
    first, second = record["results"]
    assert (first["name"], first["metric"], first["episodes"]) == ("3-way 1-shot", "accuracy", 10)
    assert (second["ways"], second["queries"], second["episodes"]) == (2, 3, 6)
    assert 0 <= first["mean"] <= 1 and first["ci95"] > 0
    assert first["paper"] == {"value": 0.9, "ci95": 0.05, "status": "confirmed"}
    assert first["verdict"] in ("better", "within", "worse") and second["verdict"] is None
    assert record["iterations"] == record["planned_iterations"] == 4
    assert record["tested_iteration"] in (2, 4) and record["stopped_by_time_limit"] is False
    assert record["train_seconds"] > 0 and record["train_seconds_from"] == "ledger"
    assert record["time_limit_minutes"] == 1 and record["mode"] == "train and test"
    assert record["device"] == "cpu" and record["machine"]["cores"] >= 1
    assert isinstance(record["machine"]["cpu"], str) and record["torch"] and record["lifelong"]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    assert datetime.fromisoformat(record["date"]).tzinfo is not None
    assert RunConfig.from_dict(record["config"]).ways == 3
    assert record["run_dir"] == str(out) and record["differences"] == TINY_ROW["differences"]
    assert record["command"].startswith(f"lifelong reproduce {path} --out {out}")
    assert record["notes"] == [] and record["config_differences"] == {}
    # validation against training time; the test of the validation's shape gets a time to paper
    assert record["validation_shape"] == [3, 1] and len(record["validation_curve"]) == 2
    seconds = [t for t, _ in record["validation_curve"]]
    assert seconds == sorted(seconds) and all(0 <= v <= 1 for _, v in record["validation_curve"])
    assert first["outcome"] in ("reached", "not reached at the paper's iterations")
    assert (first["validation_seconds_to_paper"] is None) == all(
        v < 0.9 for _, v in record["validation_curve"]
    )
    assert second["outcome"] is None and second["validation_seconds_to_paper"] is None


def test_an_interrupted_run_is_resumed_within_its_budget(tmp_path: Path) -> None:
    out, results = tmp_path / "run", tmp_path / "r.jsonl"
    short = reproduce(load_row(row_file(tmp_path, iterations=2)), out, results=results,
                      progress=False)  # fmt: skip
    assert short["iterations"] == 2
    full = reproduce(load_row(row_file(tmp_path)), out, results=results, progress=False)
    ledger = json.loads((out / LEDGER).read_text())
    seconds = [s["seconds"] for s in ledger["sessions"]]
    assert full["iterations"] == 4 and [s["start_step"] for s in ledger["sessions"]] == [0, 2]
    assert full["train_seconds"] == pytest.approx(sum(seconds), abs=0.1)
    # a session killed without recording its end counts up to its last checkpoint
    ledger["sessions"][1] |= {"seconds": None, "started": (out / "last.json").stat().st_mtime - 30}
    (out / LEDGER).write_text(json.dumps(ledger))
    assert training_time(out) == (pytest.approx(seconds[0] + 30), "ledger")
    ledger["sessions"][0]["seconds"] = 3600.0  # the budget (1 minute) is spent: no training
    (out / LEDGER).write_text(json.dumps(ledger))
    spent = reproduce(load_row(row_file(tmp_path, iterations=6)), out, results=results,
                      progress=False)  # fmt: skip
    assert spent["iterations"] == 4 and spent["stopped_by_time_limit"]
    assert spent["train_seconds"] == pytest.approx(3630, abs=0.1)
    assert spent["notes"] == ["stopped by the time limit at iteration 4 of 6"]
    assert [s["seconds"] for s in json.loads((out / LEDGER).read_text())["sessions"]] == [
        3600.0, pytest.approx(30)]  # fmt: skip
    assert [r["iterations"] for r in jsonl(results)] == [2, 4, 4]


def test_run_tests_an_existing_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "trained"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_ROW["train"].items()
             if k not in ("dataset_options", "hidden")]  # fmt: skip
    code, _, err = cli(capsys, "train", *flags, "--hidden", "8", "--seed", "3", "--quiet",
                       "--dataset-option", "classes={train: 20, val: 8, test: 8}",
                       "--dataset-option", "per_class=6", "--out", run)  # fmt: skip
    assert code == 0, err
    results = tmp_path / "r.jsonl"
    code, stdout, err = cli(capsys, "reproduce", row_file(tmp_path), "--run", run, "--results",
                            results)  # fmt: skip
    assert code == 0, err and "4 iterations in" in stdout
    [record] = jsonl(results)
    assert record["mode"] == "test only (--run)" and record["run_dir"] == str(run)
    assert record["iterations"] == 4 and record["train_seconds_from"] == "file times"
    assert record["config_differences"] == {"seed": [0, 3]}
    assert record["notes"] == ["the run differs from the row in seed: row 0, run 3"]
    assert not (run / LEDGER).exists()  # nothing trained, nothing written in the run
    last = row_file(tmp_path, {"checkpoint": "last"})
    code, _, err = cli(capsys, "reproduce", last, "--run", run, "--results", results)
    assert code == 0, err
    assert jsonl(results)[-1]["tested_iteration"] == 4  # the last, whichever validated best
    # options only the tests read are the row's, whatever the run trained with
    plain = row_file(tmp_path, {"checkpoint": "last"}, test_rotations=False)
    code, _, err = cli(capsys, "reproduce", plain, "--run", run, "--results", results)
    assert code == 0, err
    assert jsonl(results)[-1]["config"]["test_rotations"] is False
    assert jsonl(results)[-1]["config_differences"] == {"seed": [0, 3]}
    code, _, err = cli(capsys, "reproduce", row_file(tmp_path), "--run", run, "--time-limit", "1")
    assert code == 1 and "--run tests a trained run folder" in err


def test_a_run_is_loaded_once_and_results_go_under_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lifelong.pipeline.trained as trained_module

    path, out = row_file(tmp_path), tmp_path / "run"
    reproduce(load_row(path), out, results=None, progress=False)
    loads: list[Any] = []
    load = trained_module.load_checkpoint
    monkeypatch.setattr(
        trained_module, "load_checkpoint", lambda *a, **k: loads.append(a) or load(*a, **k)
    )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    record = reproduce(load_row(path), run=out, progress=False)
    assert len(loads) == 1 and len(record["results"]) == 2  # one load for the two tests
    assert not RESULTS.is_absolute()
    [saved] = jsonl(tmp_path / "cwd" / "benchmarks" / "results" / "reproduce.jsonl")
    assert saved["results"] == record["results"]


def test_the_sinusoid_baseline_row_trains_without_adaptation(tmp_path: Path) -> None:
    values = yaml.safe_load((ROWS_DIR / "sinusoid-pretrained.yaml").read_text())
    values["train"] |= {"iterations": 3, "val_every": 3, "val_episodes": 10}
    for test in values["evaluate"]:
        test["episodes"] = 20
    path = tmp_path / "sine.yaml"
    path.write_text(yaml.safe_dump(values))
    record = reproduce(load_row(path), tmp_path / "run", results=None, progress=False,
                       data_root="ignored: sinusoids are generated")  # fmt: skip
    assert [r["inner_steps"] for r in record["results"]] == [1, 5, 10]
    assert all(
        r["metric"] == "mse" and r["shots"] == 5 and r["mean"] > 0 for r in record["results"]
    )
    assert record["iterations"] == 3


def test_verdicts() -> None:
    paper = PaperValue(0.95, 0.01, "confirmed")
    assert verdict(0.955, 0.02, paper, "accuracy") == "within"
    assert verdict(0.97, 0.001, paper, "accuracy") == "better"
    assert verdict(0.90, 0.001, paper, "accuracy") == "worse"
    mse = PaperValue(0.35, None, "unconfirmed")  # no published interval: ours is used
    assert verdict(0.30, 0.01, mse, "mse") == "better"
    assert verdict(0.36, 0.02, mse, "mse") == "within"
    assert verdict(0.5, 0.1, PaperValue(None, None, "not published"), "accuracy") is None


def test_outcomes_and_time_to_the_paper() -> None:
    curve = [(60.0, 0.90), (120.0, 0.95), (180.0, 0.96), (240.0, 0.97)]
    assert time_to(curve, 0.95, "accuracy") == 120.0 and time_to(curve, 0.99, "accuracy") is None
    assert time_to([(10.0, 0.5), (20.0, 0.3)], 0.4, "mse") == 20.0
    assert still_rising(curve, "accuracy") is True
    assert still_rising([*curve, (320.0, 0.965)], "accuracy") is False  # best before the end
    assert still_rising(curve[:3], "accuracy") is None  # too few to tell
    assert still_rising([(1.0, 0.5), (2.0, 0.4), (3.0, 0.3), (40.0, 0.35)], "mse") is False
    assert outcome("within", 10, 100, True, None) == "reached"
    assert outcome("worse", 100, 100, False, None) == "not reached at the paper's iterations"
    assert outcome("worse", 2864, 60000, True, True) == (
        "stopped at the budget (4.8% of the paper's iterations; still rising)"
    )
    levelled = outcome("worse", 500, 20000, True, False)
    assert levelled is not None and levelled.endswith(
        "(2.5% of the paper's iterations; levelled off)"
    )
    assert outcome(None, 1, 2, True, True) is None
    assert outcome("worse", 500, 20000, True, False, "the recipe's", budget_schedule=True) == (
        "not reached within the budget its schedule spans"
    )
    assert outcome("worse", 5800, 5800, False, None, "the recipe's") == (
        "not reached at the recipe's iterations"
    )


# ------------------------------------------------------------------------------ the table
def table_script() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_table.py"
    spec = importlib.util.spec_from_file_location("reproduce_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_shows_results_and_rows_not_run(tmp_path: Path) -> None:
    script = table_script()
    result = {"name": "5-way 1-shot", "metric": "accuracy", "mean": 0.9731, "ci95": 0.0041,
              "verdict": "worse"}  # fmt: skip
    record = {
        "row": "maml-omniglot-5w1s", "results": [result], "iterations": 5000,
        "planned_iterations": 60000, "stopped_by_time_limit": True, "train_seconds": 3600.0,
        "time_limit_minutes": 60, "machine": {"cpu": "Xeon", "cores": 2}, "notes": ["n1"],
    }  # fmt: skip
    older = {**record, "results": [{**result, "mean": 0.5}], "train_seconds": 600.0}
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in (older, record)))
    script.main(["--results", str(results), "--out-dir", str(tmp_path)])
    table = (tmp_path / "reproduce_table.md").read_text()
    maml = next(line for line in table.splitlines() if line.startswith("| `maml-omniglot-5w1s`"))
    cells = [c.strip() for c in maml.strip("|").split("|")]
    assert cells[:9] == ["`maml-omniglot-5w1s`", "5-way 1-shot", "98.70 ± 0.40", "97.31 ± 0.41",
                         "worse: stopped at the budget (8.3% of the paper's iterations)", "",
                         "5,000 / 60,000 (time limit)", "60.0 min (limit 60)",
                         "CPU: Xeon, 2 cores"]  # fmt: skip
    proto = [line for line in table.splitlines() if line.startswith("| `protonet-omniglot-1shot`")]
    assert len(proto) == 2 and all("| 98.80 |" in p or "| 96.00 |" in p for p in proto)
    assert all("| not run |" in p for p in proto)
    assert "| 0.670† |" in table and "| not published | not run |" in table
    assert table.count("| `") == sum(len(load_row(n).tests) for n in row_names())
    assert "`maml-omniglot-5w1s` (Finn et al. 2017" in table and "; n1" in table
    png = (tmp_path / "reproduce.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    script.main(["--results", str(results), "--out-dir", str(tmp_path), "--run-only"])
    table = (tmp_path / "reproduce_table.md").read_text()
    assert table.count("| `") == 1 and maml.rsplit("[", 1)[0] + "[1] |" in table


def test_a_column_beside_gives_the_same_row_from_another_results_file(tmp_path: Path) -> None:
    script = table_script()
    result = {"name": "5-way 1-shot", "metric": "accuracy", "mean": 0.9826, "ci95": 0.0041,
              "verdict": "worse", "validation_seconds_to_paper": None,
              "paper": {"value": 0.987, "ci95": 0.004, "status": "confirmed"}}  # fmt: skip
    gpu = {
        "row": "maml-omniglot-5w1s", "results": [result], "iterations": 5528,
        "planned_iterations": 60000, "stopped_by_time_limit": True, "train_seconds": 354.1,
        "machine": {"gpu": "H200"}, "validation_curve": [[60.0, 0.9]],
        "validation_shape": [5, 1],
    }  # fmt: skip
    cpu = {
        **gpu,
        "results": [{**result, "mean": 0.9868, "validation_seconds_to_paper": 702.0}],
        "iterations": 8280,
        "train_seconds": 1800.0,
        "machine": {"cpu": "EPYC", "cores": 2},
    }
    (tmp_path / "gpu.jsonl").write_text(json.dumps(gpu) + "\n")
    (tmp_path / "cpu.jsonl").write_text(json.dumps(cpu) + "\n")
    script.main(["--results", str(tmp_path / "gpu.jsonl"), "--out-dir", str(tmp_path),
                 "--run-only", "--beside", str(tmp_path / "cpu.jsonl")])  # fmt: skip
    lines = (tmp_path / "reproduce_table.md").read_text().splitlines()
    assert lines[2].endswith("| The same row in `cpu.jsonl` |") and lines[3].endswith("---|---|")
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[3] == "98.26 ± 0.41" and cells[8] == "GPU: H200"
    assert cells[10] == (
        "98.68 ± 0.41 after 30.0 min, 8,280 its.; paper's value: 11.7 min (CPU: EPYC, 2 cores)"
    )
    (tmp_path / "cpu.jsonl").write_text("")
    script.main(["--results", str(tmp_path / "gpu.jsonl"), "--out-dir", str(tmp_path),
                 "--run-only", "--beside", str(tmp_path / "cpu.jsonl")])  # fmt: skip
    assert (tmp_path / "reproduce_table.md").read_text().splitlines()[4].endswith("| not run |")


def test_records_of_an_older_meaning_of_the_row_are_not_its_results() -> None:
    of_setting = table_script().of_setting
    protonet, maml = load_row("protonet-omniglot-1shot"), load_row("maml-omniglot-5w1s")
    # before 0.2.0, class_split vinyals was the seeded partition (now: random)
    assert not of_setting({"lifelong": "0.1.0"}, protonet)
    assert of_setting({"lifelong": "0.2.0"}, protonet)
    assert of_setting({"lifelong": "0.1.0"}, maml)  # class_split random: the same then and now
    # a record with its run's config: compared with the row and the algorithm's defaults today
    reptile = load_row("reptile-omniglot-5w1s")
    ran = resolve_config(reptile.train).to_dict()
    assert of_setting({"lifelong": "0.2.0", "config": ran}, reptile)
    fresh = {**ran, "inner_optimizer_state": "fresh"}  # Reptile's default before carried
    assert not of_setting({"lifelong": "0.2.0", "config": fresh}, reptile)
    assert of_setting({"lifelong": "0.2.0", "config": {**ran, "out": "elsewhere"}}, reptile)
    rotated = {**ran, "test_rotations": None}  # tested on the rotated characters too
    assert not of_setting({"lifelong": "0.2.0", "config": rotated}, reptile)
    # once the row has a record with its config, those without one no longer count
    older = {"row": reptile.name, "lifelong": "0.2.0"}
    newer = {"row": reptile.name, "lifelong": "0.2.0", "config": ran}
    of_row = table_script().of_row
    assert of_row([older], reptile) == [older]
    assert of_row([older, newer, {**newer, "config": fresh}], reptile) == [newer]

"""Smoke test of the paper's named experiments: each trains a few steps on digits through
the ordinary loop (tiny sizes) and writes the extra metrics; the CLI lists and runs them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inverseflow.cli import main as cli_main
from inverseflow.models import build_model
from inverseflow.train import experiments, load_checkpoint

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

NAMES = ["if-glow", "finc-glow", "emerging-glow", "glow", "if-cnn", "finc-cnn",
         "emerging-cnn", "exponential-cnn"]
TINY = {"glow": dict(levels=2, flow_steps=1, coupling_width=8),
        "cnn": dict(blocks=2, flow_steps=2)}


def test_the_paper_names_are_all_there():
    assert list(experiments.EXPERIMENTS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_experiment_trains_a_few_steps_on_digits(name, tmp_path):
    experiment = experiments.get(name)
    config = experiments.train_config(name, "digits", str(tmp_path), steps=2,
                                      sizes=TINY[experiment.backbone], batch_size=16,
                                      eval_limit=32, eval_batch_size=40, num_samples=4,
                                      warmup=1, progress=False)
    metrics = experiments.run(name, config)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["experiment"] == name and saved["steps"] == 2
    assert saved["parameters"] == metrics["parameters"] > 0
    assert saved["seconds_per_step"] > 0
    assert all(v["density_ms"] > 0 and v["sampling_ms"] > 0
               for v in saved["pass_timings_ms"]["batch_40"].values())
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    model = build_model(state["model_config"])
    model.load_state_dict(state["model"])
    for key, value in experiment.model_options().items():
        if key not in ("solve_on", "order") or experiment.model_options().get("layer") == "inverse":
            assert model.config[key] == value, key


def test_cli_lists_runs_and_resumes(tmp_path, capsys):
    assert cli_main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == NAMES
    out = tmp_path / "run"
    args = ["experiment", "finc-cnn", "--dataset", "digits", "--out", str(out), "--blocks", "2",
            "--flow-steps", "1", "--batch-size", "16", "--eval-limit", "32", "--quiet",
            "--warmup", "1"]
    assert cli_main(args + ["--steps", "2"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert set(first["pass_timings_ms"]["batch_100"]) == {"density", "sampling"}
    assert cli_main(args + ["--steps", "3", "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == 3 and resumed["train_losses"][:2] == first["train_losses"]
    # train_seconds sums both sessions, so the per-step time divides by all three steps.
    assert resumed["train_seconds"] > first["train_seconds"]
    assert resumed["seconds_per_step"] == pytest.approx(resumed["train_seconds"] / 3)


@pytest.mark.parametrize("argv,message", [
    (["experiment", "nope", "--dataset", "digits", "--out", "X", "--steps", "1"],
     "unknown experiment"),
    (["experiment", "if-cnn", "--dataset", "digits", "--out", "X"], "--steps, --time-budget"),
    (["experiment", "if-cnn", "--dataset", "digits", "--out", "X", "--steps", "1",
      "--coupling-width", "8"], "does not apply to the cnn backbone"),
    (["experiment", "glow", "--dataset", "digits", "--out", "X", "--steps", "1",
      "--blocks", "2"], "does not apply to the glow backbone"),
    (["experiment", "glow"], "--dataset and --out"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_time_budget_stops_the_run(tmp_path):
    config = experiments.train_config("glow", "digits", str(tmp_path), time_budget=1e-3,
                                      sizes=TINY["glow"], batch_size=16, eval_limit=16,
                                      eval_batch_size=16, num_samples=4, progress=False)
    metrics = experiments.run("glow", config)
    assert metrics["steps"] == 1 and metrics["stopped_by_time_budget"]
    torch.testing.assert_close(torch.tensor(metrics["train_seconds"] > 0), torch.tensor(True))


def test_paper_tables_markdown_from_runs(tmp_path):
    from inverseflow.train import paper_tables

    for name, placement in (("if-glow", "density"), ("exponential-cnn", None)):
        run = tmp_path / name
        run.mkdir()
        timings = ({"density": {"density_ms": 11.0, "sampling_ms": 22.0},
                    "sampling": {"density_ms": 33.0, "sampling_ms": 44.0}}
                   if placement else {"conv-exp": {"density_ms": 55.0, "sampling_ms": 66.0}})
        (run / "metrics.json").write_text(json.dumps({
            "dataset": "mnist", "steps": 7, "requested_steps": 7, "batch_size": 100,
            "test_images": 2000, "initial_test_bpd": 6.5, "test_bpd": 3.25, "parameters": 1234,
            "seconds_per_step": 1.5, "solve_on": placement,
            "pass_timings_ms": {"batch_1": {}, "batch_100": timings}}))
    text = paper_tables.markdown(tmp_path, wall_seconds=600, command="x", notes=["far"])
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "`" in line}
    assert "**3.250**" in rows["if-glow"] and "1,234" in rows["if-glow"]
    assert "22 ms | 11 ms" in rows["if-glow"]            # the trained placement's passes
    assert "66 ms | 55 ms" in rows["exponential-cnn"]
    assert "not run" in rows["glow"] and "not run" in rows["finc-cnn"]
    assert "10.0 min" in text and "- far" in text


def test_remeasure_times_every_trained_run_round_robin(tmp_path):
    from inverseflow.train import paper_tables

    for name in ("glow", "if-cnn"):
        experiment = experiments.get(name)
        config = experiments.train_config(name, "digits", str(tmp_path / name), steps=1,
                                          sizes=TINY[experiment.backbone], batch_size=16,
                                          eval_limit=16, eval_batch_size=16, num_samples=4,
                                          progress=False)
        experiments.run(name, config)
    result = paper_tables.remeasure(tmp_path, batch=8, repeats=2)
    assert set(result["median_ms"]) == {"glow", "if-cnn"} and result["threads"] == 1
    assert all(v > 0 for timing in result["median_ms"].values() for v in timing.values())
    text = paper_tables.markdown(tmp_path)
    assert "s / step in run" in text and "round-robin" in text
    row = next(line for line in text.splitlines() if line.startswith("| glow "))
    assert f"{result['median_ms']['glow']['sampling']:.0f} ms" in row


def _fake_run(runs, name, steps, requested=None, batch=100):
    run = runs / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({
        "dataset": "mnist", "steps": steps, "requested_steps": requested or steps,
        "batch_size": batch, "test_images": 100, "initial_test_bpd": 7.0, "test_bpd": 3.0,
        "parameters": 10, "seconds_per_step": 0.5, "solve_on": None,
        "pass_timings_ms": {"batch_100": {}}}))


def test_paper_tables_show_each_rows_steps_and_mark_unequal_budgets(tmp_path):
    from inverseflow.train import paper_tables

    _fake_run(tmp_path, "glow", 100)
    _fake_run(tmp_path, "if-glow", 300)
    _fake_run(tmp_path, "if-cnn", 250, requested=300)      # stopped by a time budget
    text = paper_tables.markdown(tmp_path)
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in text.splitlines() if line.startswith("| ") and "`" in line}
    assert rows["glow"] == "100" and rows["if-glow"] == "300"
    assert rows["if-cnn"] == "250 of 300 asked"
    assert "UNEQUAL" in text.splitlines()[0] and "equal for every row" not in text
    assert "steps: 100, 250, 300" in text

    for name in ("if-glow", "if-cnn"):
        _fake_run(tmp_path, name, 100)
    text = paper_tables.markdown(tmp_path)
    assert "UNEQUAL" not in text and "**Budget (equal for every row):** 100 Adam steps" in text


def _tiny_glow_run(runs, steps, resume=False):
    config = experiments.train_config("glow", "digits", str(runs / "glow"), steps=steps,
                                      sizes=TINY["glow"], batch_size=16, eval_limit=16,
                                      eval_batch_size=16, num_samples=4, warmup=1,
                                      progress=False, resume=resume)
    return experiments.run("glow", config)


def test_paper_tables_plan_extends_finished_rows_or_refuses(tmp_path):
    from inverseflow.train import paper_tables

    _tiny_glow_run(tmp_path, 2)
    others = {name: "train" for name in experiments.EXPERIMENTS if name != "glow"}
    assert paper_tables.plan(tmp_path, 2) == {**others, "glow": "done"}
    # A larger budget extends the finished row by --resume (it used to stay "done already"
    # at its old budget, under a header stating the new one).
    assert paper_tables.plan(tmp_path, 3)["glow"] == "resume"
    assert _tiny_glow_run(tmp_path, 3, resume=True)["steps"] == 3
    assert paper_tables.plan(tmp_path, 3)["glow"] == "done"
    with pytest.raises(ValueError, match="glow: trained for 3 steps, more than 2"):
        paper_tables.plan(tmp_path, 2)
    (tmp_path / "glow" / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="no checkpoint.pt to extend"):
        paper_tables.plan(tmp_path, 4)
    assert paper_tables.main([str(tmp_path), "--plan", "4"]) == 2


def test_remeasure_reads_the_data_folder_the_run_was_trained_from(tmp_path, monkeypatch):
    # cifar10 and imagenet are read from a folder: --remeasure used to call load_dataset
    # without it. It now takes --data-dir, and falls back to the run's own.
    from inverseflow.train import paper_tables

    _tiny_glow_run(tmp_path, 1)
    seen, real_load = [], paper_tables.load_dataset
    monkeypatch.setattr(paper_tables, "load_dataset",
                        lambda name, folder=None: seen.append(folder) or real_load(name))
    state = load_checkpoint(tmp_path / "glow" / "checkpoint.pt")
    paper_tables.remeasure(tmp_path, batch=4, repeats=1)
    assert seen == [state["train_config"]["data_dir"]]
    assert paper_tables.main([str(tmp_path), "--remeasure", "--data-dir", "/data/here",
                              "--out", str(tmp_path / "t.md")]) == 0
    assert seen[-1] == "/data/here"


SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "paper_tables.sh"


def _script(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable, "EXPERIMENTS": "glow",
           "EXTRA": "--batch-size 16 --eval-limit 16 --warmup 1",
           "GLOW_EXTRA": "--levels 1 --flow-steps 1 --coupling-width 8"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_paper_tables_script_extends_rows_to_a_larger_budget(tmp_path):
    docs_table = SCRIPT.parent.parent / "docs" / "paper-tables.md"
    before = docs_table.read_bytes() if docs_table.exists() else None
    runs = tmp_path / "runs"
    first = _script(tmp_path, "1", "digits", str(runs))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _script(tmp_path, "2", "digits", str(runs))
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((runs / "glow" / "metrics.json").read_text())["steps"] == 2
    table = (runs / "paper-tables.md").read_text()     # beside the runs by default
    row = next(line for line in table.splitlines() if line.startswith("| glow "))
    assert row.split("|")[3].strip() == "2"
    command = next(line for line in table.splitlines() if "**Command:**" in line)
    for part in ("EXTRA='--batch-size 16 --eval-limit 16 --warmup 1'",
                 "GLOW_EXTRA='--levels 1 --flow-steps 1 --coupling-width 8'",
                 "EXPERIMENTS=glow", f"scripts/paper_tables.sh 2 digits {runs} "
                 f"{runs}/paper-tables.md"):
        assert part in command, part
    # Asked for fewer steps than a row has: refused before anything runs.
    third = _script(tmp_path, "1", "digits", str(runs), str(tmp_path / "t.md"))
    assert third.returncode == 2 and "cannot be shortened" in third.stderr
    assert not (tmp_path / "t.md").exists()
    after = docs_table.read_bytes() if docs_table.exists() else None
    assert after == before                              # written only when named

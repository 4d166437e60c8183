"""A real multirun of train.py over a 2 x 2 lr x rank grid: job dirs, summary.csv, the plot, best.json."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers.cli import train_py

pytestmark = pytest.mark.slow

LRS = ("5e-3", "1e-2")
RANKS = (4, 8)
RATIO = 2


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    train_py(
        "-m", "experiment=smoke", "hparams_search=lr_rank_grid",
        f"optimizer.lr={','.join(LRS)}", f"model.lora.r={','.join(map(str, RANKS))}",  # replace the file's grid
        f"lora_alpha_ratio={RATIO}", "trainer.max_steps=3", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    return sweep


def test_every_job_of_the_grid_ran_with_alpha_following_the_rank(sweep_dir):
    seen = set()
    for job in range(len(LRS) * len(RANKS)):
        job_dir = sweep_dir / str(job)
        assert (job_dir / "summary.json").is_file()
        adapter = json.loads((job_dir / "adapter" / "adapter_config.json").read_text())
        assert adapter["lora_alpha"] == RATIO * adapter["r"]  # the ratio reached PEFT, not just the config
        seen.add(adapter["r"])
    assert seen == set(RANKS)


def test_summary_csv_has_one_row_per_job(sweep_dir):
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["job"]) for r in rows] == [0, 1, 2, 3]
    assert all(r["status"] == "ok" and not r["error"] for r in rows)
    assert {(float(r["lr"]), int(r["r"])) for r in rows} == {(float(lr), r) for lr in LRS for r in RANKS}
    for r in rows:
        assert float(r["alpha"]) == int(r["r"]) * RATIO
        summary = json.loads((sweep_dir / r["job"] / "summary.json").read_text())
        assert float(r["val_loss"]) == pytest.approx(summary["val_loss"])
        assert float(r["tokens_per_s"]) > 0 and float(r["peak_mem_gib"]) > 0
        assert r["run_dir"].endswith(f"/{r['job']}")


def test_plot_is_a_png(sweep_dir):
    assert (sweep_dir / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_json_names_the_lowest_val_loss(sweep_dir):
    losses = {job: json.loads((sweep_dir / str(job) / "summary.json").read_text())["val_loss"] for job in range(4)}
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["job"] == min(losses, key=losses.get)
    assert best["val_loss"] == pytest.approx(losses[best["job"]])
    assert best["jobs"] == best["jobs_ok"] == 4 and best["failed_jobs"] == []
    assert f"model.lora.r={best['r']}" in best["command"]


def test_a_plain_multirun_gets_the_summary_too(tmp_path):
    """-m over any key, without hparams_search: summary.csv with a column for the swept key, and best.json."""
    from tests.helpers.cli import train_py

    train_py("-m", "experiment=smoke", "trainer.max_steps=1", "data.batch_size=2,4", f"hydra.sweep.dir={tmp_path}")
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["job"], row["status"], row["data.batch_size"]) for row in rows] == [("0", "ok", "2"), ("1", "ok", "4")]
    assert json.loads((tmp_path / "best.json").read_text())["swept"] in ({"data.batch_size": 2}, {"data.batch_size": 4})

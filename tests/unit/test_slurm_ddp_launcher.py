"""hydra/launcher=slurm_ddp: sweep jobs that are DDP runs, the launcher's shape and the trainer's in step."""

from __future__ import annotations

import pytest

from tests.helpers.configs import compose_train
from tests.helpers.extras import needs_slurm

pytestmark = needs_slurm


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 8), (2, 4), (3, 2)])
def test_the_trainer_runs_on_the_nodes_and_gpus_the_launcher_asks_for(monkeypatch, nodes, gpus):
    overrides = (
        "experiment=qlora_r16", "hardware=ddp", "hydra/launcher=slurm_ddp", f"hydra.launcher.nodes={nodes}",
        f"hydra.launcher.gpus_per_node={gpus}",
    )  # fmt: skip
    launcher = compose_train(*overrides).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (nodes, gpus, gpus)
    assert launcher.mem_gb == 32 * gpus and launcher.partition is None and launcher.timeout_min == 720  # slurm.yaml's
    # Inside the job, srun started tasks_per_node tasks on each of the nodes: SLURM's variables as srun sets them.
    monkeypatch.setenv("SLURM_NNODES", str(nodes))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", f"{launcher.tasks_per_node}(x{nodes})")
    monkeypatch.setenv("SLURM_NTASKS", str(nodes * launcher.tasks_per_node))
    cfg = compose_train(*overrides)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (gpus, nodes)

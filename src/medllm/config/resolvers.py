"""OmegaConf resolvers used by medllm's configs, and what the launcher (torchrun, srun) says about the processes.

``register()`` must run before Hydra composes; importing ``medllm.config`` does it.

    ${medllm.mul:${model.lora.r},${lora_alpha_ratio}}   # a product: LoRA alpha that follows the rank
    ${medllm.sweep_name:}                               # the sweep dir in a multirun, else null
    ${medllm.if_requeued:auto}                          # auto in a requeued SLURM job, else null
    ${medllm.slurm_run_name:${now:%H-%M-%S}}            # slurm-<job id> in a SLURM job, else the argument
    ${medllm.launched:nodes}                            # nodes (or devices: processes a node) the launcher started

Light on purpose (OmegaConf and Hydra only): the entry points import it before the backend is chosen, and
Unsloth must be imported before transformers and peft.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf


def mul(*factors: float) -> int | float:
    """The product of the factors; an int when it is a whole number (LoRA alpha 8, not 8.0)."""
    product: int | float = 1
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"medllm.mul takes numbers, got {factor!r}")
        product *= factor
    return int(product) if isinstance(product, float) and product.is_integer() else product


def sweep_name() -> str | None:
    """Hydra's sweep dir (e.g. multirun/2026-07-01/12-00-00) inside a multirun job, else None: a W&B group
    that gathers the runs of one sweep (``logger.group: ${medllm.sweep_name:}``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(hydra_cfg.sweep.dir)


def if_requeued(value: str) -> str | None:
    """``value`` in a SLURM job that was requeued (SLURM_RESTART_COUNT > 0), else None: the requeued job
    runs the same command, and ``ckpt_path: ${medllm.if_requeued:auto}`` makes it resume its run."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return value if restarts.isdigit() and int(restarts) > 0 else None


def slurm_run_name(otherwise: str) -> str:
    """``slurm-<job id>`` (``slurm-<array job>_<task>``) inside a SLURM job, else ``otherwise``. The id stays
    the same when the job is requeued and on every node of the job, so all of them find one run dir."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else otherwise


def _leading_int(text: str | None) -> int | None:
    """``8`` from ``8``, and from SLURM's ``8(x2)`` (8 tasks on each of 2 nodes)."""
    digits = (text or "").split("(")[0]
    return int(digits) if digits.isdigit() else None


def launcher() -> dict[str, int] | None:
    """The nodes and processes a node as started by torchrun (WORLD_SIZE, LOCAL_WORLD_SIZE), else by srun
    (SLURM_NNODES, SLURM_NTASKS_PER_NODE), with the variables they came from; None outside both. torchrun
    first, as Lightning does: inside a SLURM job, torchrun may start the processes."""
    world, local = _leading_int(os.environ.get("WORLD_SIZE")), _leading_int(os.environ.get("LOCAL_WORLD_SIZE"))
    if world and local:
        return {"nodes": world // local, "devices": local, "by": "torchrun (WORLD_SIZE / LOCAL_WORLD_SIZE)"}
    nodes, per_node = (
        _leading_int(os.environ.get("SLURM_NNODES")),
        _leading_int(os.environ.get("SLURM_NTASKS_PER_NODE")),
    )
    if nodes and per_node and "SLURM_NTASKS" in os.environ:
        return {"nodes": nodes, "devices": per_node, "by": "srun (SLURM_NNODES, SLURM_NTASKS_PER_NODE)"}
    return None


def configured(trainer: Any) -> dict[str, Any]:
    """``num_nodes`` and ``devices`` as the trainer settings give them (a list of devices counted); ints,
    or what Lightning resolves itself (``auto``, -1)."""
    devices = trainer.get("devices", 1)
    devices = len(devices) if OmegaConf.is_list(devices) else devices
    return {"num_nodes": trainer.get("num_nodes", 1), "devices": devices}


def launched(what: str) -> int:
    """``nodes`` or ``devices`` (processes a node) as the launcher started them; 1 outside a launcher."""
    started = launcher()
    return started[what] if started else 1


def launched_processes() -> int:
    """All processes the launcher started (nodes x processes a node); 1 outside a launcher."""
    return launched("nodes") * launched("devices")


def process_rank() -> int:
    """This process's rank in a distributed run, from what torchrun, Lightning's launcher or SLURM set
    (the variables Lightning reads too); 0 outside one."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


RESOLVERS = {
    "medllm.launched": launched,
    "medllm.mul": mul,
    "medllm.sweep_name": sweep_name,
    "medllm.if_requeued": if_requeued,
    "medllm.slurm_run_name": slurm_run_name,
}


def register() -> None:
    """Register medllm's resolvers with OmegaConf; safe to call more than once."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

"""Compares the training throughput of several QLoRA paths, one process per path, on one GPU.

    python bench/make_checkpoint.py /tmp/r1-8b-random
    python bench/throughput.py --checkpoint /tmp/r1-8b-random --paths unsloth_loop,unsloth_trl,hf_peft \\
        --mode fixed --steps 20 --warmup 3 --out bench/results/throughput_fixed.json

Each path runs in its own process, so its peak memory is its own and no path inherits another's patches
(Unsloth patches transformers on import). A path prints tokens/s, trained (label) tokens/s and peak memory;
this driver prints them side by side, relative to the plain Unsloth loop, and writes them with the card,
the library versions and the settings to ``--out``. The medllm paths also report the peak that train.py
estimated before training (what ``gradient_checkpointing=auto`` decides by), printed beside the measured
one. ``MEDLLM_MEMORY_CAP_GIB=24`` in the environment makes them plan as if the GPU had 24 GiB.

Before timing anything the driver primes: it runs the first path once, untimed, with one step after the
warm-up, so that the caches the paths share (Triton's compiled kernels, Unsloth's generated modules) are
filled and the first path measured pays no more for them than the others (on a fresh H200 machine the
first train.py measured 5% slower than the same run after it). ``--no-prime`` skips this.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `bench` package importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import harness
from bench.paths import medllm

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE = "unsloth_loop"
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "unsloth", "unsloth_zoo", "trl", "bitsandbytes", "lightning")


@dataclass(frozen=True)
class BenchPath:
    """How to run one path and read its result.

    ``command(settings, workdir)`` gives the argv of the path's process, run from the repository root;
    ``workdir`` is an empty folder of its own. ``read_result(output_lines, workdir)`` turns what the process
    printed, or what it left in ``workdir``, into a dict with at least ``tokens_per_s``,
    ``label_tokens_per_s``, ``peak_gib`` and ``steps`` (None when the process gave no result), and
    ``estimate_gib`` where the path estimated its peak before training.
    """

    command: Callable[[harness.Settings, Path], list[str]]
    read_result: Callable[[list[str], Path], dict[str, Any] | None]


def result_line(lines: list[str], workdir: Path) -> dict[str, Any] | None:
    return harness.parse_result_line(lines)


def module_path(module: str, *flags: str) -> BenchPath:
    """A path implemented as a module of bench.paths, which prints a harness result line."""
    return BenchPath(
        command=lambda settings, workdir: [sys.executable, "-m", module, *harness.settings_to_argv(settings), *flags],
        read_result=result_line,
    )


def medllm_path(
    checkpointing: str,
    all_gpus: bool = False,
    as_nodes: bool = False,
    share_cpus: bool = False,
    overrides: Sequence[str] = (),
) -> BenchPath:
    """medllm's train.py on one GPU, or on every GPU of the machine; its command takes extra overrides.
    ``share_cpus``: each process gets its share of the CPUs as OMP_NUM_THREADS, not torchrun's 1.
    ``overrides``: the path's own Hydra overrides, before those given to every medllm path."""

    def command(settings: harness.Settings, workdir: Path, extra: Sequence[str] = ()) -> list[str]:
        gpus = max(1, torch.cuda.device_count()) if all_gpus else None
        threads = max(1, (os.cpu_count() or 1) // gpus) if share_cpus and gpus else None
        return medllm.command(
            settings, workdir, checkpointing, gpus=gpus, as_nodes=as_nodes, extra=[*overrides, *extra], threads=threads
        )

    return BenchPath(command, medllm.read_summary)


PATHS: dict[str, BenchPath] = {
    "unsloth_loop": module_path("bench.paths.unsloth_loop"),
    "unsloth_trl": module_path("bench.paths.unsloth_trl"),
    "unsloth_trl_padded": module_path("bench.paths.unsloth_trl", "--padded"),
    "hf_peft": module_path("bench.paths.hf_peft"),
    # medllm's train.py (Unsloth backend), with Unsloth's offloaded checkpointing and with `auto`.
    "medllm": medllm_path("unsloth"),
    "medllm_auto": medllm_path("auto"),
    # The same as "medllm" on every GPU of the machine under torchrun (hardware=ddp), `batch` rows per GPU;
    # on a machine of one GPU, DDP around that one: what DDP's own bookkeeping costs.
    "medllm_ddp": medllm_path("unsloth", all_gpus=True),
    # The same with each process given its share of the CPUs (OMP_NUM_THREADS), not the 1 torchrun sets.
    "medllm_ddp_threads": medllm_path("unsloth", all_gpus=True, share_cpus=True),
    # The same with each GPU a node of its own: torchrun --nnodes <GPUs> --nproc_per_node 1, on localhost.
    "medllm_ddp_nodes": medllm_path("unsloth", all_gpus=True, as_nodes=True),
    # The same with DDP's gradients as views into its all-reduce buckets: no copy in or out of them.
    "medllm_ddp_view": medllm_path(
        "unsloth", all_gpus=True, overrides=["+trainer.strategy.gradient_as_bucket_view=true"]
    ),
}


def run_path(
    name: str, path: BenchPath, settings: harness.Settings, workdir: Path, env: dict[str, str], timeout: float | None
) -> dict:
    """Runs one path, echoing its output with a prefix, and returns its result or the reason it has none."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = path.command(settings, workdir)
    print(f"[{name}] $ {' '.join(command)}", flush=True)
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        killer = threading.Timer(timeout or 0, kill)
        if timeout:
            killer.start()
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            print(f"[{name}] {line}", end="", flush=True)
        returncode = process.wait()
        killer.cancel()
    if timed_out.is_set():
        return {"path": name, "error": f"killed after {timeout} s"}
    result = path.read_result(lines, workdir) if returncode == 0 else None
    if result is None:
        tail = " | ".join(lines[-3:])
        return {"path": name, "error": f"exit code {returncode}, no result: {tail}"}
    return {**result, "path": name}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def primary_metric(mode: str) -> str:
    """What decides speed: all tokens are trained in fixed mode; in medical mode only the answers are."""
    return "tokens_per_s" if mode == "fixed" else "label_tokens_per_s"


def estimate_cell(result: dict) -> str:
    """A path's own estimate of its peak memory and the measured peak's ratio to it, when it made one."""
    estimate = result.get("estimate_gib")
    return f"{estimate:.2f} ({result['peak_gib'] / estimate:.2f}x)" if estimate else "-"


def table(results: list[dict], mode: str) -> str:
    metric = primary_metric(mode)
    baseline = next((r[metric] for r in results if r["path"] == BASELINE and "error" not in r), None)
    lines = [
        f"| path | tokens/s | label tokens/s | peak GiB | estimated GiB (peak / estimate) | vs {BASELINE} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['path']} | failed: {r['error'][:80]} | | | | |")
            continue
        ratio = f"{r[metric] / baseline:.2f}x" if baseline else "-"
        speeds = f"{r['tokens_per_s']:,.0f} | {r['label_tokens_per_s']:,.0f}"
        lines.append(f"| {r['path']} | {speeds} | {r['peak_gib']:.2f} | {estimate_cell(r)} | {ratio} |")
    return "\n".join(lines)


def scaling_lines(results: list[dict], mode: str) -> list[str]:
    """medllm on all GPUs (one node, or a node per GPU) against medllm on one, for those that ran."""
    by_path = {r["path"]: r for r in results if "error" not in r}
    if "medllm" not in by_path:
        return []
    metric = primary_metric(mode)
    return [
        f"{name} on {by_path[name].get('gpus')} GPUs / medllm on 1 GPU: "
        f"{by_path[name][metric] / by_path['medllm'][metric]:.2f}x"
        for name in PATHS
        if name.startswith("medllm_ddp") and name in by_path
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_settings_arguments(parser)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from: {', '.join(PATHS)}")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--workdir", type=Path, help="scratch folder for the paths (default: a temporary one)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the results already in --out (same settings; a path measured again is replaced)",
    )
    parser.add_argument("--path-timeout", type=float, default=None, help="seconds before a path is killed")
    parser.add_argument(
        "--medllm-override",
        action="append",
        default=[],
        help="a Hydra override added to the medllm paths' train.py command (repeatable), e.g. +trainer.profiler=simple",
    )
    parser.add_argument(
        "--prime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the first path once, untimed, before measuring: fills the compile caches the paths share",
    )
    args = parser.parse_args()
    unknown = [name for name in args.paths.split(",") if name not in PATHS]
    if unknown:
        parser.error(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    return args


def path_environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Unsloth writes the modules it generates into the working directory unless told otherwise; one folder
    # for all paths lets later paths reuse them, as repeated runs of one script would.
    env.setdefault("UNSLOTH_COMPILE_LOCATION", str(scratch / "unsloth_compiled_cache"))
    return env


def report_card(results: list[dict]) -> str:
    return next((r["card"] for r in results if "card" in r), None) or harness.device_name()


def write_report(out: Path, settings: harness.Settings, results: list[dict]) -> None:
    report = {
        "card": report_card(results),
        "mode": settings.mode,
        "primary_metric": primary_metric(settings.mode),
        "baseline": BASELINE,
        "settings": asdict(settings),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def earlier_results(out: Path | None, settings: harness.Settings) -> list[dict]:
    """Results of an earlier run into ``out`` with the same settings; comparable only on the same machine."""
    if out is None or not out.exists():
        return []
    report = json.loads(out.read_text())
    if report["settings"] != asdict(settings):
        raise SystemExit(f"{out} holds results for other settings: {report['settings']}")
    return report["results"]


def bench_path(name: str, medllm_overrides: Sequence[str]) -> BenchPath:
    """The path ``name``, with the user's Hydra overrides added to medllm's train.py."""
    path = PATHS[name]
    if name.startswith("medllm") and medllm_overrides:
        path = BenchPath(functools.partial(path.command, extra=medllm_overrides), path.read_result)
    return path


def prime(
    name: str, path: BenchPath, settings: harness.Settings, workdir: Path, env: dict[str, str], timeout: float | None
) -> None:
    """Runs ``path`` once with one timed step and drops its result: the compile caches are warm afterwards."""
    print(f"[prime] {name} once, untimed, to fill the compile caches", flush=True)
    outcome = run_path(f"prime {name}", path, replace(settings, steps=1), workdir / "prime", env, timeout)
    if "error" in outcome:
        print(f"[prime] failed ({outcome['error']}); the first path measured may include compilation", flush=True)
    shutil.rmtree(workdir / "prime", ignore_errors=True)


def main() -> None:
    args = parse_args()
    settings = harness.settings_from_args(args)
    results = earlier_results(args.out, settings) if args.append else []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        env = path_environment(workdir)
        names = args.paths.split(",")
        if args.prime:
            prime(names[0], bench_path(names[0], args.medllm_override), settings, workdir, env, args.path_timeout)
        for name in names:
            path = bench_path(name, args.medllm_override)
            result = run_path(name, path, settings, workdir / name, env, args.path_timeout)
            results = [r for r in results if r["path"] != name] + [result]
            if args.out:  # after every path, so an interrupted run keeps what it measured
                write_report(args.out, settings, results)
    heading = f"{settings.mode} mode on {report_card(results)}, batch {settings.batch}, {settings.steps} timed steps"
    print(f"\n{heading}:\n{table(results, settings.mode)}")
    for line in scaling_lines(results, settings.mode):
        print(line)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

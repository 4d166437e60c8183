"""A suite: several benchmarks scored in one evaluation, each read from a local copy or the hub.

``SUITE_BENCHMARKS`` names what a suite may hold, its loader and where its local copy sits under a data folder
(``suite.data_dir``), laid out as the benchmarks' releases are. A benchmark with no local copy comes from the
hub; where the hub can't be reached (offline, not cached) it is skipped with one line and listed as skipped,
while a local copy or hub rows that are malformed stop the evaluation (before any model loads), as for one
benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medllm.tasks.benchmarks import HubUnavailable, load_benchmark, load_medmcqa, load_medqa, load_pubmedqa
from medllm.tasks.exams import load_gpqa_medical, load_mmlu_medical, load_mmlu_pro_medical
from medllm.tasks.items import BenchmarkError, BenchmarkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteBenchmark:
    loader: Callable[..., list[BenchmarkItem]]
    local: str  # its copy under suite.data_dir: a file, or a folder
    what: str  # for the report's reader: which split, how many items in full


SUITE_BENCHMARKS = {
    "medqa": SuiteBenchmark(load_medqa, "medqa/test.jsonl", "MedQA (USMLE, 4 options) test, 1,273"),
    "medmcqa": SuiteBenchmark(load_medmcqa, "medmcqa/validation.jsonl", "MedMCQA dev, 4,183"),
    "pubmedqa": SuiteBenchmark(load_pubmedqa, "pubmedqa", "PubMedQA PQA-L test split, 500"),
    "mmlu_medical": SuiteBenchmark(load_mmlu_medical, "mmlu", "MMLU, 6 medical subjects, test, 1,089"),
    "mmlu_pro_medical": SuiteBenchmark(load_mmlu_pro_medical, "mmlu_pro/test.jsonl", "MMLU-Pro health + biology"),
    "gpqa_medical": SuiteBenchmark(load_gpqa_medical, "gpqa/gpqa_main.csv", "GPQA genetics + molecular biology"),
}


def local_copy(name: str, data_dir: str | None) -> str | None:
    """The path of ``name``'s copy under ``data_dir``; None where there is none (the hub is asked instead)."""
    if not data_dir:
        return None
    path = Path(data_dir).expanduser() / SUITE_BENCHMARKS[name].local
    return str(path) if path.exists() else None


def load_suite(
    names: list[str], data_dir: str | None, limit: int | None, seed: int
) -> tuple[dict[str, list[BenchmarkItem]], dict[str, str]]:
    """Each benchmark's items (``limit`` of each, seeded as for one benchmark) and the skipped ones with why."""
    unknown = [name for name in names if name not in SUITE_BENCHMARKS]
    if unknown:
        raise BenchmarkError(f"suite.benchmarks: unknown {unknown}; choose from {sorted(SUITE_BENCHMARKS)}")
    loaded, skipped = {}, {}
    for name in names:
        path = local_copy(name, data_dir)
        try:
            loaded[name] = load_benchmark(name, path, limit, seed, loader=SUITE_BENCHMARKS[name].loader)
        except HubUnavailable as err:
            where = f"no local copy under {data_dir} ({SUITE_BENCHMARKS[name].local})" if data_dir else "no data_dir"
            skipped[name] = f"{where} and the hub is out of reach"
            log.warning("suite: skipping %s: %s (%s)", name, skipped[name], str(err).splitlines()[0])
    if not loaded:
        raise BenchmarkError(
            f"suite: no benchmark could be read ({', '.join(skipped)} skipped); give suite.data_dir=<a folder laid "
            "out as medqa/test.jsonl, medmcqa/validation.jsonl, mmlu/test/*.csv, pubmedqa/>"
        )
    return loaded, skipped

"""How fast a mistake fails: train.py and eval.py with a config typo, and with one bad row in a large file.

Each case runs the entry point as a user would, in its own process, and times it from start to exit.
A case passes when the process exits non-zero with the expected message, within its limit: a typo in
5 s, a bad row among 20,000 in 15 s (on the GPU machine, where importing the backend alone takes ~40 s,
the checks must come first to meet these).

    python bench/fail_fast.py --out bench/results/fail_fast.json                  # a GPU machine
    python bench/fail_fast.py --overrides "experiment=qlora_r16 hardware=cpu model=r1_distill_llama_8b_hf"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import harness  # noqa: E402
from bench.throughput import package_versions  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    overrides: list[str]
    expected: str  # a line of the error the user must see
    limit_s: float


def rows_with_one_bad(count: int, bad_row: int) -> list[dict[str, str]]:
    """medical-o1 rows; the 1-based row ``bad_row`` has an empty Response."""
    rows = [
        {
            "Question": f"Case {i}: a 54-year-old presents with polyuria. What is the first-line therapy?",
            "Complex_CoT": "Type 2 diabetes is likely; guidelines start with lifestyle change and metformin.",
            "Response": "Metformin.",
        }
        for i in range(count)
    ]
    rows[bad_row - 1]["Response"] = ""
    return rows


def cases(base: list[str], data_file: Path, bad_row: int) -> list[Case]:
    return [
        Case("train: new key typo", "train.py", [*base, "+optimizer.lrr=1e-4"], "did you mean optimizer.lr", 5),
        Case("train: override typo", "train.py", [*base, "optimizer.lrr=1e-4"], "did you mean optimizer.lr", 5),
        Case("train: out of range", "train.py", [*base, "model.lora.dropout=1.5"], "model.lora.dropout", 5),
        Case(
            "train: bad row in 20,000",
            "train.py",
            [*base, "data=local", f"data.path={data_file}"],
            f"row {bad_row}: field 'Response' is empty",
            15,
        ),
        Case("eval: new key typo", "eval.py", ["+limitt=5"], "did you mean limit", 5),
    ]


def run_case(case: Case, run_dir: str, env: dict[str, str]) -> dict:
    command = [sys.executable, case.script, *case.overrides, run_dir]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = process.stdout + process.stderr
    named = case.expected in output
    return {
        "case": case.name,
        "command": shlex.join(command[1:-1]),
        "seconds": seconds,
        "limit_s": case.limit_s,
        "exit_code": process.returncode,
        "expected_message_shown": named,
        "passed": process.returncode != 0 and named and seconds <= case.limit_s,
        "last_lines": output.strip().splitlines()[-3:],
    }


def table(results: list[dict]) -> str:
    lines = [f"{'case':<28}{'seconds':>9}{'limit':>7}{'exit':>6}{'message':>9}  result"]
    for r in results:
        lines.append(
            f"{r['case']:<28}{r['seconds']:>9.2f}{r['limit_s']:>7.0f}{r['exit_code']:>6}"
            f"{'yes' if r['expected_message_shown'] else 'NO':>9}  {'pass' if r['passed'] else 'FAIL'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default="experiment=qlora_r16", help="train.py overrides every case starts from")
    parser.add_argument("--rows", type=int, default=20_000, help="rows in the data file of the bad-row case")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args()
    bad_row = args.rows - args.rows // 40  # near the end: every row before it is read and checked
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="fail-fast-") as scratch:
        data_file = Path(scratch) / "rows.json"
        data_file.write_text(json.dumps(rows_with_one_bad(args.rows, bad_row)), encoding="utf-8")
        results = []
        for number, case in enumerate(cases(shlex.split(args.overrides), data_file, bad_row)):
            run_dir = f"hydra.run.dir={scratch}/run{number}"  # a failed start leaves nothing in the repo
            results.append(run_case(case, run_dir, env))
            print(f"{case.name}: {results[-1]['seconds']:.2f} s, {results[-1]['last_lines'][-1:]}", flush=True)
    print(table(results))
    if args.out:
        record = {"card": harness.device_name(), "versions": package_versions(), "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if not all(r["passed"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()

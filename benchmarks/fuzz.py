"""Fuzzed parsing, the long run (issue 14): many more cases than CI, with the same checks.

The strategies of tests/fuzz_cases.py (config.json, safetensors headers, shard indexes, GGUF files,
byte mutations of real small files) run N cases per target from one seed, each case under the time
and address-space bounds of the CI test. A case that ends in anything but a documented error or a
source is a failure: counted, its input kept, and the run goes on.

Prints a table of outcomes per target; writes benchmarks/results/fuzz.json and each failure's input
under benchmarks/results/fuzz-failures/. (Memory is the allocation cases' figure, measured in a fresh
worker by tests/test_fuzz.py: this process's RSS grows with glibc's heap as the generator builds a
megabyte file per case, whatever the parsers do.)

    python benchmarks/fuzz.py --examples 2000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the strategies and seed writers the CI test uses
from fuzz_cases import CASE_ADDRESS_SPACE, CASE_SECONDS, TARGETS, ParserBug, run_case, target_strategy, \
    write_seeds  # noqa: E402

from gemma_export.bench import format_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FAILURES = RESULTS / "fuzz-failures"


def fuzz_target(target: str, seeds, examples: int, seed: int, work: Path) -> dict:
    """Runs one target; returns its row (outcome counts, failures with where they were raised)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    outcomes: Counter = Counter()
    failures: list[dict] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=target_strategy(target, seeds))
    def run(case):
        try:
            outcomes[run_case(target, case, work)] += 1
        except ParserBug as bug:
            outcomes["failure"] += 1
            kept = _keep(work, FAILURES / f"{target}-{len(failures)}")
            cause = bug.__cause__
            frame = traceback.extract_tb(cause.__traceback__)[-1] if cause is not None else None
            failures.append({"message": str(bug), "raised_at": f"{frame.filename}:{frame.lineno}" if frame else None,
                             "input": str(kept)})

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    cases = sum(outcomes.values())
    return {"target": target, "cases": cases, "seconds": seconds, "cases_per_s": cases / seconds,
            "outcomes": dict(outcomes), "failures": failures}


def _keep(work: Path, kept: Path) -> Path:
    """A copy of what run_case wrote under work (the case's folder or file)."""
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for written in work.iterdir():
        if written.is_dir():
            shutil.copytree(written, kept / written.name)
        else:
            shutil.copyfile(written, kept / written.name)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="cases per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        seeds = write_seeds(Path(tmp) / "seeds")
        for target in args.targets:
            work = Path(tmp) / "work" / target
            work.mkdir(parents=True)
            rows.append(fuzz_target(target, seeds, args.examples, args.seed, work))
            print(f"{target}: {rows[-1]['cases']} cases, {rows[-1]['outcomes']}", flush=True)

    kinds = sorted({k for row in rows for k in row["outcomes"]})
    table = [{"target": row["target"], "cases": row["cases"], "seconds": row["seconds"],
              **{k: row["outcomes"].get(k, 0) for k in kinds}} for row in rows]
    columns = [("cases", "cases", "{}"), ("s", "seconds", "{:.0f}")] + [(k, k, "{}") for k in kinds]
    print(format_table(table, columns, label="target"))
    for row in rows:
        for failure in row["failures"]:
            print(f"FAILURE {row['target']}: {failure['message'][:200]} at {failure['raised_at']} "
                  f"(input: {failure['input']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"examples": args.examples, "seed": args.seed, "case_seconds": CASE_SECONDS,
              "case_address_space_mib": CASE_ADDRESS_SPACE / 2**20, "targets": rows}
    (RESULTS / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'fuzz.json'}")
    if any(row["failures"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

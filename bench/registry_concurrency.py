"""Registry under contention: N processes doing register / promote / rollback at once on one SQLite registry.

    python bench/registry_concurrency.py [--processes 4] [--operations 200] [--seed 0]

Every process registers small fake runs and promotes and rolls back three aliases of one model,
choosing at random; promotions go through the default gates (all runs score the same, so only a
candidate that already holds the alias is refused). Afterwards the database is checked: version
numbers 1..N with none lost or doubled, one holder per alias equal to its history's last entry,
every history chain unbroken (each change's `from` is the previous `to`), every rollback restoring
the holder below the top of the replayed stack, every change a process reported present in the
history, and `verify` clean. Writes bench/results/registry_concurrency.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sqlite3
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

MODEL = "bench"
ALIASES = ("production", "staging", "canary")
EXPECTED_REFUSALS = ("already holds", "no previous holder")


def _fake_run(root: Path, name: str) -> Path:
    run = root / name
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (run / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text('{"messages": []}\n')
    (run / "eval").mkdir()
    (run / "eval" / "eval_report.json").write_text(json.dumps(
        {"n_examples": 1, "n_total": 1, "settings": {}, "verdict": {"passed": True, "gates": []},
         "metrics": {"task.field_accuracy": 0.8}}))
    return run


def worker(args: tuple[int, int, int, str, str]) -> list[dict]:
    """One process's share of the workload; every operation's outcome."""
    index, operations, seed, home, runs_dir = args
    os.environ["TUNEKIT_HOME"] = home
    from tunekit import registry
    from tunekit.errors import RegistryError

    rng = random.Random(seed * 1000 + index)
    results = []
    for number in range(operations):
        kind = "register" if number == 0 else rng.choices(("register", "promote", "rollback"), (3, 5, 2))[0]
        try:
            if kind == "register":
                record = registry.register(_fake_run(Path(runs_dir), f"w{index}-{number}"), name=MODEL)
                results.append({"op": kind, "ok": True, "version": record.version})
                continue
            alias = rng.choice(ALIASES)
            if kind == "promote":
                latest = registry.resolve(MODEL).version
                done = registry.promote(f"{MODEL}@{rng.randint(1, latest)}", alias)
            else:
                done = registry.rollback(MODEL, alias)
            results.append({"op": kind, "ok": True, "alias": alias, "history_id": done.history_id,
                            "from": done.from_version, "to": done.to_version})
        except RegistryError as exc:
            expected = any(text in exc.message for text in EXPECTED_REFUSALS) or "is not set" in exc.message
            results.append({"op": kind, "ok": False, "expected": expected, "error": exc.message})
        except Exception as exc:  # a lock timeout or a broken invariant: the benchmark reports it
            results.append({"op": kind, "ok": False, "expected": False, "error": f"{type(exc).__name__}: {exc}"})
    return results


def check(home: Path, results: list[dict]) -> dict[str, bool]:
    """The consistency checks, each True when it holds."""
    from tunekit import registry

    db = sqlite3.connect(home / "registry" / "registry.db")
    db.row_factory = sqlite3.Row
    versions = [r[0] for r in db.execute("SELECT version FROM versions WHERE model = ? ORDER BY version", (MODEL,))]
    registered = sorted(r["version"] for r in results if r["op"] == "register" and r["ok"])
    history = db.execute("SELECT * FROM alias_history ORDER BY id").fetchall()
    holders = {(r["model"], r["alias"]): r for r in db.execute("SELECT * FROM aliases")}
    ids = {r["id"]: r["version"] for r in db.execute("SELECT id, version FROM versions")}
    chains_ok, replay_ok, last = True, True, {}
    stacks: dict[str, list[int]] = {}
    for row in history:
        stack = stacks.setdefault(row["alias"], [])
        chains_ok &= row["from_version_id"] == last.get(row["alias"])
        if row["action"] == "promote":
            stack.append(row["to_version_id"])
        else:
            replay_ok &= len(stack) >= 2 and stack[-2] == row["to_version_id"] and stack[-1] == row["from_version_id"]
            stack.pop()
        last[row["alias"]] = row["to_version_id"]
    by_id = {r["id"]: r for r in history}
    changes = [r for r in results if r["op"] in ("promote", "rollback") and r["ok"]]
    reported_ok = all(
        c["history_id"] in by_id and by_id[c["history_id"]]["alias"] == c["alias"]
        and ids[by_id[c["history_id"]]["to_version_id"]] == c["to"]
        and (ids.get(by_id[c["history_id"]]["from_version_id"]) == c["from"])
        for c in changes
    )
    return {
        "versions_contiguous": versions == list(range(1, len(versions) + 1)),
        "no_register_lost_or_doubled": registered == versions,
        "one_holder_per_alias": all(holders[(MODEL, a)]["version_id"] == v for a, v in last.items()) and len(holders) == len(last),
        "alias_points_at_last_change": all(holders[(MODEL, a)]["history_id"] == max(r["id"] for r in history if r["alias"] == a) for a in last),
        "history_chain_unbroken": chains_ok,
        "rollback_restores_previous_holder": replay_ok,
        "every_reported_change_in_history": reported_ok and len(changes) == len(history),
        "verify_clean": registry.verify(home=home).ok,
        "no_half_written_copies": not any((home / "registry" / "tmp").iterdir()) if (home / "registry" / "tmp").exists() else True,
    }


def run_workload(workdir: Path, *, processes: int = 4, operations: int = 200, seed: int = 0) -> dict:
    """Run the workload on a fresh registry under `workdir`; the figures and the checks."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # spawned workers import this module by name
    home, runs_dir = workdir / "home", workdir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    shares = [operations // processes + (1 if i < operations % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared through fork
    with context.Pool(processes) as pool:
        started = time.perf_counter()
        per_worker = pool.map(worker, [(i, shares[i], seed, str(home), str(runs_dir)) for i in range(processes)])
        seconds = time.perf_counter() - started
    results = [r for rows in per_worker for r in rows]
    checks = check(home, results)
    db = sqlite3.connect(home / "registry" / "registry.db")
    count = {op: sum(r["op"] == op and r["ok"] for r in results) for op in ("register", "promote", "rollback")}
    return {
        "workload": "registry register/promote/rollback", "processes": processes, "operations": len(results),
        "seconds": round(seconds, 3), "ops_per_s": round(len(results) / seconds, 1),
        "registers_done": count["register"], "promotes_done": count["promote"], "rollbacks_done": count["rollback"],
        "alias_changes_done": count["promote"] + count["rollback"],
        "refused_as_expected": sum(not r["ok"] and r["expected"] for r in results),
        "errors": [r["error"] for r in results if not r["ok"] and not r["expected"]],
        "versions": db.execute("SELECT COUNT(*) FROM versions").fetchone()[0],
        "history_rows": db.execute("SELECT COUNT(*) FROM alias_history").fetchone()[0],
        "checks": checks,
    }


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--operations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "registry_concurrency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_workload(Path(tmp), processes=args.processes, operations=args.operations, seed=args.seed)
    summary["hardware"] = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "sqlite": sqlite3.sqlite_version}
    summary["all_checks_passed"] = all(summary["checks"].values()) and not summary["errors"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    sys.exit(0 if summary["all_checks_passed"] else 1)


if __name__ == "__main__":
    main()

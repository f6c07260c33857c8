"""Run lazyaccept's coverage-guided fuzzers (atheris/libFuzzer) for a given time: `make fuzz` calls this.

    fuzz/run.py --seconds N [--jobs J] [--corpus DIR] [--artifacts DIR] [--json] [--no-atheris] [TARGET ...]

Each target (fuzz/targets.py) runs in its own process, seeded with valid inputs built by the code itself, and
prints how many inputs it ran. A crash (an exception other than the promised clear rejection) is saved as a
reproducer in the artifacts directory and makes the exit code 1; replay one with
`fuzz/run.py --replay FILE TARGET`. --no-atheris runs a seeded mutation loop instead, for machines without
atheris (not coverage-guided).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


@dataclass
class Outcome:
    target: str
    engine: str
    seconds: float
    runs: int
    crashes: int
    artifacts: list[str]
    detail: str = ""


def _import_targets(instrument: bool):
    """fuzz.targets, instrumented for coverage when running under atheris."""
    sys.path.insert(0, str(ROOT))
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["lazyaccept", "fuzz"]):
            from fuzz import targets
    else:
        from fuzz import targets
    return targets


# ------------------------------------------------------------------------------------------------- worker side


def _worker(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the child process: hand the target to libFuzzer (never returns)."""
    import atheris

    targets = _import_targets(instrument=True)
    target = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *libfuzzer_args], target.run)
    atheris.Fuzz()


# ------------------------------------------------------------------------------------------------- driver side


def _seed_corpus(name: str, corpus: Path) -> None:
    targets = _import_targets(instrument=False)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.TARGETS[name].seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)


def run_atheris(name: str, seconds: float, corpus_root: Path, artifacts: Path) -> Outcome:
    targets = _import_targets(instrument=False)
    target = targets.TARGETS[name]
    corpus = corpus_root / name
    _seed_corpus(name, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.glob(f"{name}-*"))
    args = [
        str(corpus),
        f"-max_total_time={max(1, int(seconds))}",
        f"-max_len={target.max_len}",
        "-print_final_stats=1",
        "-timeout=20",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={artifacts}/{name}-",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--", *args],
        capture_output=True,
        text=True,
        errors="replace",
        cwd=ROOT,
        timeout=seconds + 120,
    )
    elapsed = time.perf_counter() - t0
    log = proc.stderr + proc.stdout
    found = _EXECUTED.findall(log)
    new = sorted(str(p) for p in set(artifacts.glob(f"{name}-*")) - before)
    crashes = len(new) if new else int(proc.returncode != 0)
    detail = "" if proc.returncode == 0 else _crash_summary(log)
    return Outcome(name, "atheris", round(elapsed, 1), int(found[-1]) if found else 0, crashes, new, detail)


def _crash_summary(log: str) -> str:
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line or "ERROR:" in line), 0)
    return "\n".join(lines[start : start + 30])


def run_mutations(name: str, seconds: float, seed: int, artifacts: Path) -> Outcome:
    """Without atheris: random byte-level mutations of the seeds, in process, for `seconds`."""
    targets = _import_targets(instrument=False)
    target = targets.TARGETS[name]
    rng = random.Random(seed)
    pool = [bytes(s) for s in target.seeds()]
    runs = crashes = 0
    saved: list[str] = []
    detail = ""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        data = _mutate(rng, rng.choice(pool), target.max_len)
        runs += 1
        try:
            target.run(data)
        except Exception:
            crashes += 1
            artifacts.mkdir(parents=True, exist_ok=True)
            path = artifacts / f"{name}-mutation-{runs}"
            path.write_bytes(data)
            saved.append(str(path))
            detail = detail or traceback.format_exc(limit=6)
        else:
            if len(pool) < 256 and rng.random() < 0.05:
                pool.append(data)
    return Outcome(name, "mutation", round(time.perf_counter() - t0, 1), runs, crashes, saved, detail)


def _mutate(rng: random.Random, data: bytes, max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # an interesting integer
            value = rng.choice([0, 1, 7, 8, 0xFF, 0xFFFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 52, (1 << 64) - 1])
            buf[pos : pos + 8] = value.to_bytes(8, "little")
        elif op == 2:  # insert bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and buf:  # delete bytes
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 4 and len(buf) > 8:  # copy a chunk elsewhere
            src = rng.randrange(len(buf) - 8)
            buf[pos : pos + 8] = buf[src : src + 8]
        elif op == 5:  # truncate
            del buf[pos:]
    return bytes(buf[:max_len])


def replay(path: Path, name: str) -> int:
    targets = _import_targets(instrument=False)
    targets.TARGETS[name].run(path.read_bytes())
    print(f"{name}: {path} runs clean")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    names = list(_import_targets(instrument=False).TARGETS)
    parser = argparse.ArgumentParser(prog="fuzz/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"default all: {', '.join(names)}")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets fuzzed at once")
    parser.add_argument("--corpus", type=Path, help="keep the corpus here (default: a temporary directory)")
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".cache" / "fuzz-artifacts",
                        help="where crash reproducers go (default .cache/fuzz-artifacts)")
    parser.add_argument("--no-atheris", action="store_true", help="mutation loop without coverage guidance")
    parser.add_argument("--seed", type=int, default=1, help="seed of the --no-atheris mutation loop")
    parser.add_argument("--replay", type=Path, metavar="FILE", help="run one input through TARGET and exit")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in names]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: choose from {', '.join(names)}")
    if args.replay:
        if len(args.targets) != 1:
            parser.error("--replay needs exactly one TARGET")
        return replay(args.replay, args.targets[0])
    chosen = args.targets or names
    use_atheris = not args.no_atheris
    if use_atheris:
        try:
            import atheris  # noqa: F401
        except ImportError:
            parser.error("atheris is not installed (pip install atheris==3.0.0), or pass --no-atheris")
    with tempfile.TemporaryDirectory(prefix="lazyaccept-corpus-") as tmp:
        corpus_root = args.corpus or Path(tmp)

        def one(name: str) -> Outcome:
            if use_atheris:
                return run_atheris(name, args.seconds, corpus_root, args.artifacts)
            return run_mutations(name, args.seconds, args.seed, args.artifacts)

        jobs = max(1, args.jobs if use_atheris else 1)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(one, chosen))
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        print(f"{'target':12} {'engine':9} {'seconds':>8} {'inputs':>10} {'crashes':>8}")
        for o in outcomes:
            print(f"{o.target:12} {o.engine:9} {o.seconds:8.1f} {o.runs:10,} {o.crashes:8}")
            for path in o.artifacts:
                print(f"  reproducer: {path}  (fuzz/run.py --replay {path} {o.target})")
            if o.detail:
                print("  " + o.detail.replace("\n", "\n  "))
    return 1 if any(o.crashes for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

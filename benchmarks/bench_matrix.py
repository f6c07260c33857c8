"""The matrix on Dask: the same N-cell real-binary matrix (Debian's 6.12 stub, direct boot, model OS; TD size x
vCPUs x up-front policy) on a LocalCluster of 1 and of 2 workers. Reports the wall time of each sweep (cluster
already up; the package scattered within it), the speedup, and the scheduling overhead per cell,
(workers x wall - sum of the cells' own wall times) / cells, as a fraction of the median cell time (goal < 5 %).

python -m benchmarks.bench_matrix [--cells N] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import time

from lazyaccept import binaries
from lazyaccept.matrix.cell import CellResult, CellTask, FileRef
from lazyaccept.matrix.dask_executor import DaskExecutor

RAMS = ("2G", "4G", "8G", "16G")
VCPUS = (1, 2, 4)
POLICIES = (("below-4g", []), ("256M", [1]), ("512M", [2]), ("1G", [1, 3]))  # up front, on-demand options


def matrix(n: int) -> list[CellTask]:
    """The first n cells of RAMS x VCPUS x POLICIES (48 cells), cycling with a seed axis beyond that."""
    path = binaries.BinaryStore(allow_download=False).deb(binaries.LINUX)
    kernel = FileRef(binaries.LINUX.sha256, path.name, path.stat().st_size, str(path), "deb")
    tasks = []
    combos = (
        (seed, *combo) for seed in itertools.count() for combo in itertools.product(POLICIES, RAMS, VCPUS)
    )  # not product(count(), ...): product materialises its inputs
    for seed, (upfront, options), ram, vcpus in itertools.islice(combos, n):
        scenario = {
            "td": {"ram": ram, "vcpus": vcpus},
            "firmware": {"upfront": upfront, "on_demand": options},
            "payload": {"kernel": "debian:linux-6.12"},
            "run": {"rng_seed": seed},
        }
        key = hashlib.sha256(json.dumps([scenario, kernel.sha256], sort_keys=True).encode()).hexdigest()
        axes = {"ram": ram, "vcpus": vcpus, "upfront": upfront, "on_demand": options}
        label = f"{ram}/{vcpus}cpu/{upfront}+{options}"
        tasks.append(CellTask(key, label, axes, scenario, (kernel,), 300.0))
    return tasks


def sweep(tasks: list[CellTask], workers: int) -> tuple[float, float, list[CellResult]]:
    """(cluster start s, sweep wall s, results) on a LocalCluster of `workers` worker processes."""
    t0 = time.perf_counter()
    with DaskExecutor(workers=workers) as executor:
        started = time.perf_counter() - t0
        results: list[CellResult] = []
        t1 = time.perf_counter()
        executor.run(tasks, results.append)
        wall = time.perf_counter() - t1
    return started, wall, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=48, help="cells in the matrix (default 48)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    args = parser.parse_args()
    tasks = matrix(args.cells)
    counts = [int(w) for w in args.workers.split(",")]
    walls: dict[int, float] = {}
    for workers in counts:
        started, wall, results = sweep(tasks, workers)
        walls[workers] = wall
        statuses = sorted({r.status for r in results})
        outcomes = sorted({str(r.record["outcome"]) for r in results if r.record})
        cell_walls = [r.wall_s for r in results]
        median = statistics.median(cell_walls)
        overhead = (workers * wall - sum(cell_walls)) / len(results)
        print(
            f"{len(results)} cells on {workers} worker(s): {wall:.1f} s (cluster start {started:.1f} s); "
            f"status {', '.join(statuses)}; outcomes {', '.join(outcomes)}; cell median {median:.2f} s, "
            f"sum {sum(cell_walls):.1f} s; overhead {overhead * 1000:.0f} ms/cell = {overhead / median:.1%} "
            "of the median cell (goal < 5 %)"
        )
    if 1 in walls:
        for workers in counts:
            if workers != 1:
                print(f"speedup {workers} workers / 1: {walls[1] / walls[workers]:.2f}x")


if __name__ == "__main__":
    main()

"""The matrix on Dask: the same N-cell real-binary matrix (Debian's 6.12 stub, direct boot, model OS; host
profile x TD size x vCPUs x up-front policy x on-demand option, built by matrix.spec as `lazyaccept matrix` builds
it, every pinned .deb travelling with each cell) on a LocalCluster of 1 and of 2 workers. Reports the wall time of
each sweep (cluster already up; the packages scattered within it), the speedup, and the scheduling overhead per
cell, (workers x wall - sum of the cells' own wall times) / cells, as a fraction of the median cell time (goal
< 5 %).

python -m benchmarks.bench_matrix [--cells N] [--workers 1,2]     (N up to 96; the first 48 on kvm-2m)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lazyaccept.matrix.cell import CellResult, CellTask
from lazyaccept.matrix.dask_executor import DaskExecutor
from lazyaccept.matrix.spec import expand, matrix_from_dict

MATRIX = {
    "base": {"payload": {"kernel": "debian:linux-6.12"}},
    "axes": {
        "host_profile": ["kvm-2m", "kvm-4k"],
        "ram": ["2G", "4G", "8G", "16G"],
        "vcpus": [1, 2, 4],
        "upfront": ["below-4g", "256M"],
        "on_demand": [[], ["allocator"]],
    },
}


def matrix(n: int) -> list[CellTask]:
    """The first n cells of MATRIX."""
    tasks = [c.task for c in expand(matrix_from_dict(MATRIX, Path.cwd())) if c.task is not None]
    if not 0 < n <= len(tasks):
        raise SystemExit(f"--cells: 1 to {len(tasks)}, got {n}")
    return tasks[:n]


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

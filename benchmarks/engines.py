"""Dask or Ray for `digitlab batch` (issue #14): start-up, throughput with 1 and 2 workers,
memory, install size, on the same files with the same reading function.

Each engine reads COUNT PNG files (MNIST digits) with digitlab's NumPy runtime, loaded once per
worker: Dask as `digitlab batch` does it (a task per shard of 1,000 paths), Ray as Ray Data's
documented pattern (`read_binary_files` + `map_batches` with a class). Ray is not a digitlab
dependency: run this with a Python that has both (`pip install ray pandas` in a separate venv
that also sees digitlab's, e.g. through a .pth file).

    python benchmarks/engines.py [--count 20000]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from _common import write_result
from batch_scale import make_images
from digitlab import artifacts

RUN = str(artifacts.ready_run("digit"))


def installed_megabytes(*distributions: str) -> float:
    """What pip installed for these distributions (their files), in MB."""
    total = 0
    for name in distributions:
        dist = importlib.metadata.distribution(name)
        total += sum(
            (Path(dist.locate_file(f))).stat().st_size
            for f in dist.files or []
            if Path(dist.locate_file(f)).is_file()
        )
    return round(total / 2**20, 1)


def tree_rss(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        for one in [process, *process.children(recursive=True)]:
            try:
                total += one.memory_info().rss
            except psutil.Error:
                pass
    return round(total / 2**20, 1)


def dask_figures(paths: list[str], workers: int) -> dict:
    from dask.distributed import Client, LocalCluster

    from digitlab.batch import Task, read_shard

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
    client = Client(cluster)
    client.wait_for_workers(workers)
    start_up = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as output:
        tasks = [
            Task(i, tuple(paths[s : s + 1000]), RUN, False, f"{output}/{i}.jsonl", "jsonl")
            for i, s in enumerate(range(0, len(paths), 1000))
        ]
        started = time.perf_counter()
        read = sum(f.result()["images"] for f in client.map(read_shard, tasks, pure=False))
        seconds = time.perf_counter() - started
        memory = tree_rss([psutil.Process()])
    client.close()
    cluster.close()
    return {"start_up_s": round(start_up, 2), "images": read,
            "images_per_s": round(read / seconds, 1), "rss_mb": memory}  # fmt: skip


class RayReader:
    """Ray Data's pattern: the model loaded once per actor, batches of file bytes in."""

    def __init__(self):
        from digitlab.predict import Predictor

        self.predictor = Predictor.from_run(Path(RUN))

    def __call__(self, batch: dict) -> dict:
        named = list(zip(batch["path"], batch["bytes"], strict=True))
        answers = [a for _, a in self.predictor.predict_many(named, workers=1)]
        return {
            "path": batch["path"],
            "label": np.array([getattr(a, "label", -1) for a in answers]),
        }


def ray_figures(paths: list[str], folder: Path, workers: int) -> dict:
    import ray

    started = time.perf_counter()
    # one CPU slot more than readers: Ray Data's file-reading tasks need one of their own, or
    # they wait forever behind the reading actors
    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False)
    start_up = time.perf_counter() - started
    started = time.perf_counter()
    dataset = ray.data.read_binary_files(str(folder), include_paths=True).map_batches(
        RayReader, batch_size=1000, concurrency=workers, num_cpus=1
    )
    read = sum(len(batch["path"]) for batch in dataset.iter_batches(batch_size=1000))
    seconds = time.perf_counter() - started
    memory = tree_rss([psutil.Process()])
    ray.shutdown()
    return {"start_up_s": round(start_up, 2), "images": read,
            "images_per_s": round(read / seconds, 1), "rss_mb": memory}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    count = parser.parse_args().count
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result: dict = {"images": count, "python": sys.executable}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        make_images(folder, count)
        paths = sorted(str(p) for p in folder.rglob("*.png"))
        result["dask"] = {
            "install_mb": installed_megabytes("dask", "distributed"),
            **{f"workers_{n}": dask_figures(paths, n) for n in (1, 2)},
        }
        print("dask", result["dask"], flush=True)
        try:
            import ray  # noqa: F401
        except ImportError:
            result["ray"] = "not installed in this Python"
        else:
            result["ray"] = {
                "install_mb": installed_megabytes("ray"),
                **{f"workers_{n}": ray_figures(paths, folder, n) for n in (1, 2)},
            }
    write_result("engines", result)


if __name__ == "__main__":
    main()

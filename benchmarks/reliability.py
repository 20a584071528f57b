"""The hostile checks of tests/test_hostile.py at a larger scale, with their figures.

- a fuzz corpus (seeds, specials, N mutants) through `digitlab predict --json`, plain and
  --number: lines out, tracebacks, the slowest file;
- kill -9 at random moments of `digitlab data fetch` and `digitlab train`: corrupt files at
  final paths, a broken `runs/latest`, leftovers after the next start;
- random requests to every route of the API in-process: answers of 500;
- a real `digitlab serve` with 16 slow uploaders and 48 normal predictions; 50 oversize
  uploads through urllib.

    python benchmarks/reliability.py --run ../runs/latest [--mutants 2000] [--kills 20]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _common import write_result

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from conftest import free_port  # noqa: E402
from corpus import slowest_file_seconds, write_corpus  # noqa: E402
from digitlab import config, datasets  # noqa: E402
from test_hostile import (  # noqa: E402
    CONTENT_TYPES,
    ROUTES,
    _slow_sender,
    kill_fetches,
    kill_trainings,
)

DIGITLAB = str(Path(sys.executable).with_name("digitlab"))


def corpus_check(run: Path, mutants: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        paths = write_corpus(Path(folder), count=mutants, seed=1)
        result = {"files": len(paths)}
        for mode in ("digit", "number"):
            started = time.perf_counter()
            finished = subprocess.run(
                [DIGITLAB, "predict", "--run", str(run), "--json", folder]
                + (["--number"] if mode == "number" else []),
                capture_output=True,
                text=True,
                check=False,
            )
            records = [json.loads(line) for line in finished.stdout.splitlines()]
            result[mode] = {
                "lines": len(records),
                "errors": sum("error" in r for r in records),
                "tracebacks": finished.stderr.count("Traceback"),
                "stderr_lines": len(finished.stderr.splitlines()),  # warnings would show here
                "exit_status": finished.returncode,
                "seconds": round(time.perf_counter() - started, 2),
            }
        result["slowest_file_seconds"] = round(slowest_file_seconds(paths), 3)
    return result


def kill_check(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        fetch = kill_fetches(Path(home), config.data_dir() / "mnist", rounds)
    with tempfile.TemporaryDirectory() as root:
        train = kill_trainings(Path(root) / "runs", [DIGITLAB, "train"], rounds // 2)
    return {"data_fetch": fetch, "train": train}


def api_fuzz(run: Path, requests: int) -> dict:
    from starlette.testclient import TestClient

    from digitlab.predict import Predictor
    from digitlab.web.app import create_app

    rng = random.Random(2)
    statuses: dict[int, int] = {}
    with TestClient(create_app(Predictor.from_run(run))) as client:
        for _ in range(requests):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000)))
            if rng.random() < 0.4:
                depth = rng.randint(0, 2000)
                body = ("[" * depth + "1" + "]" * depth).encode()
            content_type = rng.choice(CONTENT_TYPES)
            response = client.request(
                rng.choice(["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
                rng.choice(ROUTES) + rng.choice(["", "?number=true", "?number=x"]),
                content=body,
                headers={"Content-Type": content_type} if content_type else {},
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return {"requests": requests, "statuses": dict(sorted(statuses.items()))}


def server_check(run: Path) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [DIGITLAB, "serve", "--run", str(run), "--port", str(port), "--body-timeout", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{url}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        _, (x_test, _) = datasets.load_data("mnist", report=lambda line: None)
        stop = threading.Event()
        with ThreadPoolExecutor(16) as pool:
            slow = [pool.submit(_slow_sender, port, stop) for _ in range(16)]
            time.sleep(0.5)
            normal = []
            for index in range(48):
                body = json.dumps({"pixels": x_test[index].tolist()}).encode()
                request = urllib.request.Request(
                    f"{url}/api/predict", data=body, headers={"Content-Type": "application/json"}
                )
                started = time.perf_counter()
                try:
                    status = urllib.request.urlopen(request, timeout=10).status
                except urllib.error.HTTPError as error:
                    status = error.code
                normal.append((status, time.perf_counter() - started))
            slow_results = [future.result(timeout=20) for future in slow]
            stop.set()
        oversize = []
        for _ in range(50):
            request = urllib.request.Request(
                f"{url}/api/predict", data=b"x" * (3 * 2**20), headers={"Content-Type": "image/png"}
            )
            try:
                urllib.request.urlopen(request, timeout=10)
                oversize.append("200")
            except urllib.error.HTTPError as error:
                oversize.append(str(error.code))
            except OSError as error:
                oversize.append(type(error).__name__)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {
        "slow_uploaders": 16,
        "normal_predictions": {
            "count": len(normal),
            "ok": sum(status == 200 for status, _ in normal),
            "max_seconds": round(max(seconds for _, seconds in normal), 3),
        },
        "slow_answers": {str(s): [r[0] for r in slow_results].count(s) for s in {408, None}},
        "slowest_slow_answer_seconds": round(max(r[1] for r in slow_results), 2),
        "oversize_urllib": {answer: oversize.count(answer) for answer in set(oversize)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("../runs/latest"))
    parser.add_argument("--mutants", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3000)
    arguments = parser.parse_args()
    run = arguments.run.resolve()
    np.seterr(all="ignore")
    result = {
        "corpus": corpus_check(run, arguments.mutants),
        "kill_9": kill_check(arguments.kills),
        "api_fuzz": api_fuzz(run, arguments.requests),
        "server": server_check(run),
    }
    write_result("reliability", result)


if __name__ == "__main__":
    main()

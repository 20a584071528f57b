"""Check and install the ready-made models shipped with digitlab (``make ready-models``).

``make ready-models`` trains them again with the project's own ``digitlab train`` and fixed
seeds into build/ready-runs, then runs ``check``: each rebuilt model must match the shipped
one's data checksums and settings, and its test accuracy within TOLERANCE (on one machine the
same seed gives the same weights; another CPU's float rounding can move a few test digits).
``install`` copies rebuilt models into src/digitlab/ready/ (``make ready-models-install``).

    python scripts/ready_models.py check build/ready-runs
    python scripts/ready_models.py install build/ready-runs [cnn|reader]  (default: both)
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from digitlab import fileio
from digitlab.manifest import run_config

SHIPPED = Path(__file__).resolve().parent.parent / "src" / "digitlab" / "ready"
KINDS = {"cnn": "latest", "reader": "latest-reader"}  # shipped folder: the runs link to it
FILES = ("model.keras", "inference.npz")  # and metrics.json, written last with ready_made
# test accuracy: the CNN's on 10,000 digits, the reader's share of 2,000 numbers exact
TOLERANCE = {"cnn": 0.002, "reader": 0.01}
SAME = ("model", "dataset", "config", "seed", "input_shape", "data_sha256")


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def check(runs: Path) -> bool:
    good = True
    for kind, link in KINDS.items():
        rebuilt, shipped = _manifest(runs / link), _manifest(SHIPPED / kind)
        for manifest in (rebuilt, shipped):  # settings added since read as their defaults
            manifest["config"] = run_config(manifest)
            # the reader trained further names its starting run's folder on the machine that
            # made it: whether it started from one is the setting, not where that lay
            manifest["config"]["start_from"] = bool(manifest["config"]["start_from"])
        different = [key for key in SAME if rebuilt.get(key) != shipped.get(key)]
        new = rebuilt["metrics"]["test_accuracy"]
        old = shipped["metrics"]["test_accuracy"]
        close = abs(new - old) <= TOLERANCE[kind]
        print(
            f"{kind}: rebuilt {new:.4f} vs shipped {old:.4f} test accuracy "
            f"({'within' if close else 'OUTSIDE'} {TOLERANCE[kind]}); "
            + (f"different {', '.join(different)}" if different else "same data and settings")
        )
        good = good and close and not different
    return good


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _without_optimizer(path: Path) -> None:
    """Save the Keras model again without its optimizer state (two thirds of the file): a
    shipped model only predicts."""
    import keras

    keras.saving.load_model(path, compile=False).save(path)


def _flags(kind: str, manifest: dict) -> str:
    """The ``digitlab train`` options that made this run, beyond its kind's defaults."""
    from digitlab import models

    defaults = models.get(kind).config(seed=manifest["seed"]).to_dict()
    flags = {"start_from": "from"}  # the option's name, where it is not the setting's
    return "".join(
        f" --{flags.get(key, key.replace('_', '-'))} "
        + (Path(value).name if key == "start_from" else str(value))
        for key, value in manifest["config"].items()
        if key != "seed" and defaults.get(key) != value
    )


def install(runs: Path, kinds: list[str]) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    for kind, link in KINDS.items():
        if kind not in kinds:
            continue
        source, target = (runs / link).resolve(), SHIPPED / kind
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            with fileio.atomic_path(target / name) as temporary:
                shutil.copyfile(source / name, temporary)
                if name == "model.keras":
                    _without_optimizer(temporary)
        manifest = _manifest(source)
        manifest["ready_made"] = {
            "made_with": f"digitlab train --model {kind} --seed {manifest['seed']}"
            f"{_flags(kind, manifest)} (make ready-models)",
            "run": source.name,
            "digitlab_commit": commit,
            "machine": f"{platform.machine()}, {_cpu()}",
        }
        fileio.atomic_write_text(target / "metrics.json", json.dumps(manifest, indent=2) + "\n")
        print(f"installed {source} as {target}")


USAGE = "usage: ready_models.py check RUNS | install RUNS [cnn|reader ...]"


def main(argv: list[str]) -> None:
    """Check the arguments before touching anything: a misspelt kind installs nothing and says so."""
    if len(argv) < 2 or argv[0] not in ("check", "install") or (argv[0] == "check" and argv[2:]):
        sys.exit(USAGE)
    command, runs, kinds = argv[0], Path(argv[1]), argv[2:] or list(KINDS)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        sys.exit(f"unknown model kind {', '.join(unknown)}: choose from {', '.join(KINDS)}")
    missing = [KINDS[kind] for kind in kinds if not (runs / KINDS[kind]).is_dir()]
    if missing:
        sys.exit(
            f"{runs} holds no {', '.join(missing)} run: train the models first (make ready-models)"
        )
    if command == "install":
        install(runs, kinds)
    elif not check(runs):
        sys.exit("the rebuilt models do not match the shipped ones (above)")


if __name__ == "__main__":
    main(sys.argv[1:])

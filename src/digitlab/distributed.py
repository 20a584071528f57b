"""Data-parallel training over several processes (and machines) on JAX's distributed runtime:
``digitlab train --distributed``.

Every process runs the same training: the same seed, so the same initial weights; its own
shard of every batch (``Job.shard``: every N-th training image, then batches of
``batch_size / N``); and Keras' ``DataParallel`` distribution, which keeps one copy of the
weights per device and averages the gradients over all of them each step (an all-reduce: gloo
over TCP on CPUs, NCCL on GPUs, ICI on TPUs). The global batch stays the one asked for. After
training, each process takes a plain local copy of the weights (``local_copy``); only process
0 evaluates, writes the run folder and points ``runs/latest`` at it.

JAX-only: it uses ``jax.distributed`` directly, for the CPU collectives setting and the
heartbeat timeout that ends a job whose process died.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError

if TYPE_CHECKING:
    import keras

# Seconds without a heartbeat before the coordinator declares a process dead and every other
# process is stopped (JAX's default is 100).
HEARTBEAT_TIMEOUT = 20
JOIN_TIMEOUT = 120  # seconds for all processes to arrive
# What a cluster scheduler or launcher sets, besides the flags (Keras' own names)
ENVIRONMENT = {
    "coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "process_count": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
}


class JobStoppedError(DigitlabError):
    """Another process of the job died or left: this one cannot go on."""


@dataclass(frozen=True)
class Job:
    process_id: int = 0
    process_count: int = 1
    device_count: int = 1  # over all processes
    local_device_count: int = 1  # this process's

    @property
    def is_main(self) -> bool:
        return self.process_id == 0

    @property
    def distributed(self) -> bool:
        return self.device_count > 1

    def shard(self, array: np.ndarray) -> np.ndarray:
        """This process's share: every ``process_count``-th item, from ``process_id``, cut to
        a multiple of its devices (each batch, the last one too, is split evenly over them)."""
        share = array[self.process_id :: self.process_count]
        return share[: len(share) - len(share) % self.local_device_count]

    def per_process_batch(self, batch_size: int) -> int:
        if batch_size % self.device_count:
            raise DigitlabError(
                f"batch size {batch_size} cannot be split evenly over {self.device_count} "
                f"devices: choose a multiple of {self.device_count}"
            )
        return batch_size // self.process_count

    def describe(self) -> dict:
        return {"processes": self.process_count, "devices": self.device_count}


def _setting(given, name: str, convert=str):
    if given is not None:
        return given
    value = os.environ.get(ENVIRONMENT[name])
    return convert(value) if value else None


def join(
    coordinator: str | None = None, process_count: int | None = None, process_id: int | None = None
) -> Job:
    """Join the job (when it has more than one process) and train data-parallel over all of
    its devices. Each setting not given comes from the environment (``ENVIRONMENT``), else
    from JAX's own detection (Slurm, Open MPI); with none at all, this process alone, over
    its own devices (e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=2``)."""
    import jax

    # how CPUs exchange gradients between processes (GPUs and TPUs bring their own)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    coordinator = _setting(coordinator, "coordinator")
    process_count = _setting(process_count, "process_count", int)
    process_id = _setting(process_id, "process_id", int)
    in_scheduler = any(name in os.environ for name in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))
    if coordinator or (process_count or 1) > 1 or in_scheduler:
        if coordinator and (process_count is None or process_id is None):
            raise DigitlabError("--coordinator needs --num-processes and --process-id too")
        if (
            process_count is not None
            and process_id is not None
            and not (0 <= process_id < process_count)
        ):
            raise DigitlabError(f"--process-id must be 0 to {process_count - 1}")
        try:
            jax.distributed.initialize(
                coordinator,
                process_count,
                process_id,
                initialization_timeout=JOIN_TIMEOUT,
                heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
            )
        except Exception as error:  # JAX raises several kinds when the job cannot form
            raise DigitlabError(
                f"could not join the job (coordinator: {coordinator or 'from the scheduler'}): "
                f"{_short(error)}"
            ) from None
    import keras

    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(
        # each process feeds its own shard: Keras must not shard the data again
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    )
    return Job(jax.process_index(), jax.process_count(), len(devices), jax.local_device_count())


def fit_callbacks(job: Job) -> list[keras.callbacks.Callback]:
    """What ``fit`` needs besides digitlab's own callbacks in this job.

    With more than one device in a process, Keras must finish each step before it queues the
    next: by default it queues steps ahead (its callbacks run on a thread pool), and XLA:CPU's
    in-process all-reduce then deadlocks, each device's thread waiting in another step's
    rendezvous until XLA aborts the process (seen with two forced CPU devices and 40,000 or
    more training images; jax 0.10). A callback with its own ``on_train_batch_end`` (and
    ``on_test_batch_end``, for the validation steps) turns Keras' queueing off: each step's logs
    are read, so awaited, before the next step starts.
    """
    if job.local_device_count < 2:
        return []
    import keras

    class OneStepAtATime(keras.callbacks.Callback):
        # their presence is the point: Keras awaits each step's logs for them
        def on_train_batch_end(self, batch, logs=None):
            pass

        def on_test_batch_end(self, batch, logs=None):
            pass

    return [OneStepAtATime()]


def local_copy(model: keras.Model, build) -> keras.Model:
    """The trained weights in a plain model of this process, for evaluating and saving (a
    distributed model's outputs span other processes' devices)."""
    import keras

    weights = model.get_weights()  # replicated: every process holds them all
    keras.distribution.set_distribution(None)
    copy = build()
    copy.set_weights(weights)
    return copy


def stopped(error: Exception, job: Job) -> JobStoppedError:
    return JobStoppedError(
        f"process {job.process_id} of {job.process_count}: the job stopped, another process "
        f"is gone ({_short(error)})"
    )


def _short(error: Exception) -> str:
    """JAX's error without its repeated prefixes and its long tail."""
    text = re.sub(r"(Error dispatching computation: )+", "", str(error)).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

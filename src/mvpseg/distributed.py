"""torch.distributed for ``torchrun``: set up the process group, ask who we are, synchronise, tear down.

    torchrun --nproc_per_node 4 -m mvpseg eval --dataset voc --data-root data/ --out runs/eval

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. A process started
without them (or with WORLD_SIZE=1) runs alone: nothing is initialised and every helper here
degrades to the single-process answer, so callers never need to branch.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "PeerFailure",
    "PeerWatch",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_distributed",
    "is_main_process",
]


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(
    device: str | torch.device | None = None,
    init_method: str | None = None,
    timeout_s: float | None = None,
) -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun with WORLD_SIZE > 1.

    CUDA processes use NCCL on ``cuda:LOCAL_RANK`` (made the current device); CPU processes use
    gloo. Calling it again, or after the group was initialised elsewhere, just reports the group.

    Args:
        device: "cpu" forces gloo on the CPU even where CUDA exists; "cuda" (any index) means
            ``cuda:LOCAL_RANK`` under torchrun; None picks CUDA when available. Alone (no
            torchrun), the device itself, default CUDA when available.
        init_method: the rendezvous; default ``env://`` (torchrun's MASTER_ADDR / MASTER_PORT);
            e.g. ``file:///tmp/rendezvous`` in tests.
        timeout_s: collective timeout in seconds (default: torch's).

    Returns:
        (rank, world_size, device) for this process: (0, 1, device) when running alone.

    Raises:
        RuntimeError: WORLD_SIZE > 1 without RANK, or LOCAL_RANK without a matching CUDA device.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    if is_distributed():
        if dist.get_backend() == "nccl":
            return dist.get_rank(), dist.get_world_size(), torch.device("cuda", torch.cuda.current_device())
        return dist.get_rank(), dist.get_world_size(), wanted if wanted.type != "cuda" else torch.device("cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, wanted
    if "RANK" not in os.environ:
        raise RuntimeError(f"WORLD_SIZE={world_size} but RANK is not set: launch with torchrun")
    rank = int(os.environ["RANK"])
    if wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA devices: "
                f"start at most that many processes per node"
            )
        wanted, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(wanted)
    else:
        backend = "gloo"
    options: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
    dist.init_process_group(backend=backend, init_method=init_method or "env://", rank=rank,
                            world_size=world_size, **options)
    return rank, world_size, wanted


def is_main_process() -> bool:
    """True on rank 0, and in a process running alone: the one that prints and writes files."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op when running alone)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (itself when running alone).

    NCCL reduces on the current CUDA device and gloo on the CPU; the tensor is moved there and back,
    so callers may keep counters wherever they like.

    Args:
        tensor: any numeric tensor, the same shape and dtype on every rank.

    Returns:
        The sum over ranks, on the input's device (the input itself may be overwritten).
    """
    if not is_distributed():
        return tensor
    target = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    work = tensor.to(target)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over all ranks, in place (a no-op when running alone).

    The gradients travel in one flat buffer per dtype: one collective instead of one per tensor.
    Every rank must hold gradients for the same parameters (``zero_grad(set_to_none=False)``).

    Args:
        parameters: the trained parameters; those without a gradient are skipped.
    """
    if not is_distributed():
        return
    world_size = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for parameter in parameters:
        if parameter.grad is not None:
            by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
    for grads in by_dtype.values():
        flat = all_reduce_sum(torch.cat([grad.reshape(-1) for grad in grads]))  # (sum of numels,)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad) / world_size)
            offset += grad.numel()


def cleanup() -> None:
    """Destroy the process group if one is initialised (call once, at the end of the run)."""
    if is_distributed():
        dist.destroy_process_group()


class PeerFailure(RuntimeError):
    """Another process of the group failed (an exception, or it was killed): this one should stop too."""


_WATCHES = itertools.count()  # every process creates its watches in the same order: the same key prefixes


class PeerWatch:
    """No hang when a process of the group fails: every other process learns it within seconds.

    Collectives wait for every process; a process that died never arrives, and the others would wait
    for torch's timeout (tens of minutes). Instead, each process beats a counter in the process group's
    key-value store from a thread; one that fails with an exception says so (:meth:`fail`), and one
    whose counter stops for ``dead_after_s`` seconds (killed, out of memory) is taken as dead. The
    main thread calls :meth:`check` between pieces of work and ends with :meth:`sum_when_done`
    instead of a collective; both raise :class:`PeerFailure` once a peer failed. Running alone,
    everything here is a no-op. Use it as a context manager (the thread stops on exit).

    A process that has not yet beaten once (slow imports, CUDA initialisation, a model still loading on a
    busy node) gets ``startup_s`` instead of ``dead_after_s``: a late start is not a death. Measured on a
    2-core CPU (benchmarks/batch_bench.py): a killed process was noticed 16.7 s later without torchrun
    (``dead_after_s`` 10 s under load), and 4.3 s later under torchrun, whose agent stops the rest itself.

    Args:
        interval_s: seconds between beats (and checks of the others).
        dead_after_s: seconds without a beat after which a process that has beaten is taken as dead.
        startup_s: seconds a process has for its first beat.
    """

    def __init__(self, interval_s: float = 0.5, dead_after_s: float = 10.0, startup_s: float = 120.0) -> None:
        if interval_s <= 0 or dead_after_s <= interval_s or startup_s < dead_after_s:
            raise ValueError(f"PeerWatch wants 0 < interval_s < dead_after_s <= startup_s, not {interval_s}, "
                             f"{dead_after_s}, {startup_s}")
        self.interval_s, self.dead_after_s, self.startup_s = interval_s, dead_after_s, startup_s
        self.active = is_distributed()
        self.failure: str | None = None
        self._stop = threading.Event()
        if not self.active:
            return
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # The default group's store (private in torch, stable since 1.x): torchrun's agent hosts it, or rank 0.
        self.store = dist.distributed_c10d._get_default_store()
        self.prefix = f"mvpseg-watch/{next(_WATCHES)}"
        self._thread = threading.Thread(target=self._beat, name="mvpseg-peer-watch", daemon=True)
        self._thread.start()

    def __enter__(self) -> PeerWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _beat(self) -> None:
        seen = {rank: (0, time.monotonic()) for rank in range(self.world_size) if rank != self.rank}
        while not self._stop.is_set():
            try:
                self.store.add(f"{self.prefix}/beat/{self.rank}", 1)
                if self.store.add(f"{self.prefix}/failed", 0):  # add 0: read without waiting for the key
                    failed = self.store.get(f"{self.prefix}/failed_rank").decode()
                    self.failure = f"process {failed} of {self.world_size} failed"
                    return
                now = time.monotonic()
                for rank, (count, since) in seen.items():
                    current = self.store.add(f"{self.prefix}/beat/{rank}", 0)
                    if current != count:
                        seen[rank] = (current, now)
                    elif now - since > (self.dead_after_s if count else self.startup_s):
                        self.failure = f"process {rank} of {self.world_size} stopped answering (killed?)"
                        return
            except Exception as error:  # the store's host is gone: the group is broken
                if not self._stop.is_set():
                    self.failure = f"lost contact with the other processes ({type(error).__name__})"
                return
            self._stop.wait(self.interval_s)

    def check(self) -> None:
        """Raise :class:`PeerFailure` when another process has failed."""
        if self.failure is not None:
            raise PeerFailure(self.failure)

    def fail(self) -> None:
        """Tell the others that this process failed (call before re-raising its exception)."""
        if self.active:
            try:
                self.store.set(f"{self.prefix}/failed_rank", str(self.rank))
                self.store.add(f"{self.prefix}/failed", 1)
            except Exception:  # the store is gone: the others find out by themselves
                pass

    def sum_when_done(self, values: Sequence[int]) -> list[int]:
        """Wait for every process to finish its work and sum their ``values`` (the final counts).

        Raises:
            PeerFailure: a process failed while the others waited.
        """
        if not self.active:
            return list(values)
        self.store.set(f"{self.prefix}/values/{self.rank}", ",".join(str(int(value)) for value in values))
        self.store.add(f"{self.prefix}/finished", 1)
        while self.store.add(f"{self.prefix}/finished", 0) < self.world_size:
            self.check()
            time.sleep(min(self.interval_s, 0.05))
        rows = [self.store.get(f"{self.prefix}/values/{rank}").decode().split(",") for rank in range(self.world_size)]
        total = [sum(int(row[index]) for row in rows) for index in range(len(values))]
        self._stop.set()
        # A store hosted by rank 0 must outlive the others' last reads: rank 0 leaves last.
        self.store.add(f"{self.prefix}/left", 1)
        deadline = time.monotonic() + 30.0
        while self.rank == 0 and self.store.add(f"{self.prefix}/left", 0) < self.world_size:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return total

    def close(self) -> None:
        """Stop the thread (it exits within ``interval_s``)."""
        self._stop.set()

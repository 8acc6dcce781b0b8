"""Many devices: `torchrun --nproc_per_node N -m labelaudit fit ...` spreads the folds over N processes.

Fold f is trained by rank f mod N, on its own device (LOCAL_RANK's GPU under --device auto/cuda), with the
fold's own seed, so a fold's weights do not depend on N or on which rank trained it. No gradient is
exchanged: folds are independent models, so the only traffic is coordination (gloo, also on GPUs: a few
small messages, and no NCCL watchdog on a rank that waits hours for another's fold). Rank 0 preprocesses
and writes run.json and the calibration; each fold's checkpoint, weights and graphs are written by the one
rank that trains it; the others wait at barriers. Importable without torch (the CLI asks `is_primary`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from ..errors import UsageError

log = logging.getLogger(__name__)

#: A rank may wait at a barrier while another preprocesses the dataset or trains a long fold.
BARRIER_TIMEOUT = timedelta(days=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's: rank of world processes, local_rank on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def folds(self, count: int) -> list[int]:
        """The folds this rank trains: f with f mod world == rank."""
        return [f for f in range(count) if f % self.world == self.rank]


def current_ranks() -> Ranks:
    """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK; one process (rank 0 of 1) without them."""
    try:
        ranks = Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
        raise UsageError(f"RANK {ranks.rank} of WORLD_SIZE {ranks.world}: expected 0 <= RANK < WORLD_SIZE")
    return ranks


def is_primary() -> bool:
    """Whether this process reports results (rank 0, or the only process)."""
    return current_ranks().primary


class Group:
    """Coordination between the ranks of one fit; with one process every call returns at once."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    @property
    def primary(self) -> bool:
        return self.ranks.primary

    @property
    def world(self) -> int:
        return self.ranks.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value if self.primary else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        found: list = [None] * self.world
        dist.all_gather_object(found, value)
        return found


@contextmanager
def process_group(ranks: Ranks) -> Iterator[Group]:
    """Join torchrun's process group (gloo, env:// rendezvous) for the fit; nothing to join for one process."""
    if ranks.world == 1:
        yield Group(ranks)
        return
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise UsageError("this PyTorch build has no torch.distributed gloo backend, which torchrun fits need",
                         hint="run fit without torchrun, or install a PyTorch build with distributed support")
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield Group(ranks)
    finally:
        dist.destroy_process_group()


def rank_device(spec: str, ranks: Ranks) -> str:
    """--device for this rank: `auto` and `cuda` become its own GPU (LOCAL_RANK mod the GPUs); others stay."""
    if ranks.world == 1 or spec.strip().lower() not in ("auto", "cuda"):
        return spec
    import torch

    if not torch.cuda.is_available():
        return spec
    return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"

"""Many devices: `torchrun --nproc_per_node N -m labelaudit fit ...` shares the folds out over N processes.

With N <= F folds, fold f is trained by rank f mod N alone, on its own device (LOCAL_RANK's GPU under
--device auto/cuda), with the fold's own seed, so a fold's weights do not depend on N or on which rank
trained it, and no gradient is exchanged. With N > F, the ranks form F teams of N // F (a `Team`): each team
trains its fold with DistributedDataParallel, every member taking an equal share of each batch, so the
gradients are averaged over the team (gloo on CPU, NCCL on GPUs). Coordination between teams is over gloo (a
few small messages, and no NCCL watchdog on a rank that waits hours for another's fold). Rank 0 preprocesses
and writes run.json and the calibration; each fold's checkpoint, weights and graphs are written by its
team's first member; the others wait at barriers. Importable without torch (the CLI asks `is_primary`).
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


@dataclass(frozen=True)
class Layout:
    """How `world` processes share `folds` folds: teams of `team_size` ranks, team k training folds f = k mod teams.

    Folds are spread first (no gradient traffic); only processes beyond one per fold join a fold's team.
    Ranks beyond teams * team_size (N > F and not a multiple of F) have nothing to train.
    """

    world: int
    folds: int

    @property
    def team_size(self) -> int:
        return max(1, self.world // self.folds)

    @property
    def teams(self) -> int:
        return min(self.folds, self.world // self.team_size)

    def team_of(self, rank: int) -> int | None:
        team = rank // self.team_size
        return team if team < self.teams else None

    def members(self, team: int) -> list[int]:
        return list(range(team * self.team_size, (team + 1) * self.team_size))

    def folds_of(self, rank: int) -> list[int]:
        """The folds `rank` trains (with its team)."""
        team = self.team_of(rank)
        return [] if team is None else [f for f in range(self.folds) if f % self.teams == team]

    @property
    def idle(self) -> list[int]:
        return list(range(self.teams * self.team_size, self.world))


class Team:
    """The ranks that train one fold together: this rank is `member` of `size`, in torch process group `group`.

    A team of one (the default) trains alone and every method here is a no-op. Members draw the same random
    streams, so each batch is sampled identically everywhere and a member keeps rows member, member + size, ...
    """

    def __init__(self, member: int = 0, size: int = 1, group=None, backend: str | None = None) -> None:
        self.member, self.size, self.group, self.backend = member, size, group, backend

    @property
    def leader(self) -> bool:
        """The member that writes the fold's checkpoint, weights and graphs."""
        return self.member == 0

    def rows(self, batch_size: int) -> range:
        """This member's rows of a batch of `batch_size`."""
        return range(self.member, batch_size, self.size)

    def check_batch(self, batch_size: int, what: str = "--batch-size") -> None:
        if batch_size % self.size:
            raise UsageError(f"{what} {batch_size}: a fold trained by {self.size} processes together needs a "
                             f"multiple of {self.size}, so every process takes an equal share of each batch",
                             hint=f"use {what} {max(self.size, batch_size - batch_size % self.size)}")

    def wrap(self, module, device):
        """`module` under DistributedDataParallel over this team (itself for a team of one)."""
        if self.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, process_group=self.group)

    def sum(self, values):
        """Element-wise sum of a float tensor over the team (in place; returned)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.group)
        return values

    def concat(self, values):
        """The members' equal-length 1-D tensors, concatenated in member order (a batch's values, whole)."""
        if self.size == 1:
            return values
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(values) for _ in range(self.size)]
        dist.all_gather(parts, values.contiguous(), group=self.group)
        return torch.cat(parts)

    def average_gradients(self, parameters) -> None:
        """Average .grad over the team, for updates outside DDP (MCPM's meta mask network)."""
        if self.size == 1:
            return
        for p in parameters:
            if p.grad is not None:
                self.sum(p.grad).div_(self.size)

    def drift(self, module) -> float:
        """Largest difference between this member's parameters and the leader's (0 for a team of one)."""
        if self.size == 1:
            return 0.0
        import torch
        import torch.distributed as dist

        params = list(module.parameters())
        worst = torch.zeros(1, device=params[0].device)
        for p in params:
            leader = p.detach().clone()
            dist.broadcast(leader, src=dist.get_global_rank(self.group, 0), group=self.group)
            worst = torch.maximum(worst, (p.detach() - leader).abs().max().reshape(1))
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=self.group)
        return float(worst)


SOLO = Team()


def unwrapped(module):
    """The network itself, also under DistributedDataParallel (for calls on its parameters, not its forward)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


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

    def team(self, layout: Layout, device_type: str) -> Team:
        """This rank's team in `layout`; every rank must call it (torch creates each group on all ranks).

        A team's group uses NCCL on CUDA devices (DDP's gradient traffic), gloo elsewhere.
        """
        if layout.team_size == 1:
            return SOLO
        import torch.distributed as dist

        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        mine = layout.team_of(self.ranks.rank)
        found = SOLO
        for team in range(layout.teams):
            members = layout.members(team)
            group = dist.new_group(ranks=members, backend=backend, timeout=BARRIER_TIMEOUT)
            if team == mine:
                found = Team(members.index(self.ranks.rank), len(members), group, backend)
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

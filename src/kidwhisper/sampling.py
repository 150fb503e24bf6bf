"""A batch sampler that is deterministic, sharded across processes, and resumable mid-epoch.

Every epoch is one seeded permutation of the whole dataset, cut into global batches of
`batch_size x world_size`; process `rank` takes its slice of each. Since the order depends
only on (seed, epoch), a restarted run that starts from `(epoch, batches consumed)` sees
exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_items < batch_size * world_size:
            raise ValueError(
                f"{num_items} training clips cannot fill one global batch of "
                f"{batch_size} x {world_size} processes: lower training.batch_size"
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        """Batches per epoch for one process (an incomplete last global batch is dropped)."""
        return self.num_items // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields epoch `epoch` from its batch number `start` on."""
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        step = self.batch_size * self.world_size
        for b in range(self.start, len(self)):
            first = b * step + self.rank * self.batch_size
            yield order[first : first + self.batch_size]

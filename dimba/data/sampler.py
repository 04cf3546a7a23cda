"""A shuffling sampler whose position is a function of how many batches training has consumed.

The permutation of data epoch e is a function of (seed, e) only, and where an iteration starts is read, when
it starts, from the number of batches consumed so far (the trainer's global step): epoch = consumed //
batches_per_epoch, then the rest of that epoch. So a run resumed from any checkpoint (periodic, or written
when max_steps, max_time or a signal stopped it, when Lightning itself starts a new epoch) continues with
exactly the data it would have seen. It subclasses DistributedSampler, so under DDP it shards by rank itself
and Lightning does not wrap it in another sampler; every rank consumes the same number of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) that starts each iteration at the data position given by
    `consumed()`, the number of batches of `batch_size` this rank has trained on (default: none)."""

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 consumed: Callable[[], int] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.consumed = consumed or (lambda: 0)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the data epoch follows the batches consumed, not Lightning's epoch counter (which moves on
        when a run stops mid-epoch)."""

    def __iter__(self) -> Iterator[int]:
        if self.batches_per_epoch == 0:
            return iter([])
        self.epoch, skip = divmod(self.consumed(), self.batches_per_epoch)
        return iter(list(super().__iter__())[skip * self.batch_size:])

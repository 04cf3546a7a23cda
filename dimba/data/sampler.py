"""A shuffling sampler that can resume in the middle of an epoch.

The permutation of each epoch is a function of (seed, epoch) only, so an interrupted run that knows its epoch
and how many samples of it were consumed continues with exactly the data it would have seen. It subclasses
DistributedSampler, so under DDP it shards by rank itself and Lightning does not wrap it in another sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) with `resume_at(epoch, start)`: skip this rank's first `start`
    indices of that epoch (once; later epochs start at 0)."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def resume_at(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts from its beginning
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start:]
        self.start = 0
        return iter(indices)

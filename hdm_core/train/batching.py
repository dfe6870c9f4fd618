"""Which items form each batch: repeats, shuffling and bucket grouping, per epoch.

An epoch lists every item ``repeats`` times, shuffles the list with a generator keyed by
``(seed, epoch)``, groups it by bucket (a batch holds one latent size), cuts each group
into *global* batches of ``batch_size × processes`` and shuffles the batches. A bucket's
leftover items (fewer than a global batch) wait for a later epoch's shuffle. The number of
batches per epoch is fixed, so micro-step ``k`` always maps to the same batch: a resumed
run continues exactly where the saved one stopped, and data-parallel rank ``r`` trains on
slice ``r`` of the same global batch the other ranks slice.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict

from .data import DatasetError, TrainingData
from .objective import sample_generator

log = logging.getLogger(__name__)


def _rng(seed: int, *key: int) -> random.Random:
    return random.Random(int(sample_generator(seed, *key).initial_seed()))


def check_dataset_size(data: TrainingData, global_batch: int) -> int:
    """Batches per epoch; raises :class:`DatasetError` when the data cannot fill one batch."""
    counts: Counter[tuple[int, int]] = Counter()
    for i in range(len(data)):
        counts[data.bucket(i)] += data.repeats(i)
    total = sum(counts.values())
    if total < global_batch:
        raise DatasetError(
            f"the dataset is too small: {len(data)} images ({total} samples with repeats) cannot fill one batch of "
            f"{global_batch} (batch_size x processes). Add images, raise the repeat count (N_name folders) or "
            "lower batch_size"
        )
    per_epoch = sum(c // global_batch for c in counts.values())
    if per_epoch == 0:
        sizes = ", ".join(f"{w * 8}x{h * 8}: {c}" for (h, w), c in sorted(counts.items()))
        raise DatasetError(
            f"no aspect-ratio bucket holds a full batch of {global_batch} samples (samples per bucket size: {sizes}). "
            "Lower batch_size, raise repeats, or use the square crop mode so every image shares one size"
        )
    dropped = {b: c % global_batch for b, c in counts.items() if c % global_batch}
    if dropped:
        log.info("per epoch %d samples wait for a later epoch (buckets not filling a whole batch)", sum(dropped.values()))
    return per_epoch


def epoch_batches(data: TrainingData, epoch: int, seed: int, global_batch: int) -> list[list[int]]:
    """The global batches of one epoch (item indices)."""
    rng = _rng(seed, 0x5EED, epoch)
    items = [i for i in range(len(data)) for _ in range(data.repeats(i))]
    rng.shuffle(items)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in items:
        groups[data.bucket(i)].append(i)
    batches = []
    for bucket in sorted(groups):
        group = groups[bucket]
        batches.extend(group[k : k + global_batch] for k in range(0, len(group) - global_batch + 1, global_batch))
    rng.shuffle(batches)
    return batches


class BatchStream:
    """Global batch number ``k`` → (epoch, item indices), cached one epoch at a time."""

    def __init__(self, data: TrainingData, seed: int, global_batch: int) -> None:
        self.data, self.seed, self.global_batch = data, seed, global_batch
        self.per_epoch = check_dataset_size(data, global_batch)
        self._epoch: int | None = None
        self._batches: list[list[int]] = []

    def epoch_of(self, k: int) -> int:
        return k // self.per_epoch

    def __getitem__(self, k: int) -> list[int]:
        epoch = self.epoch_of(k)
        if epoch != self._epoch:
            self._batches = epoch_batches(self.data, epoch, self.seed, self.global_batch)
            self._epoch = epoch
        return self._batches[k % self.per_epoch]


def sample_rng(seed: int, micro_step: int, position: int) -> random.Random:
    """Python RNG for one sample's data augmentation (crop, caption), keyed like its noise."""
    return _rng(seed, 0xDA7A, micro_step, position)

"""Training samplers for multi-label data (paper Section 3.2: random, cycle and least-sampled; plus extras).

Every sampler draws one *global* index sequence from ``(seed, epoch)``; under DDP each rank takes the disjoint
shard ``sequence[rank::world_size]`` (the sequence is padded by wrapping to a multiple of the world size), so the
shards together cover the sequence and all ranks agree without communication.

Label-aware samplers read a label as positive only when it is 1 (0 and NaN = unknown are not positive). A class
without any positive image is skipped (one warning per sampler); labels without any positive are an error. The
class-based samplers never draw an image without a positive label.

``python -m mlgcn_lt.data.samplers report ...`` prints the paper's Table 5 for any sampler (see
:mod:`mlgcn_lt.data.sampler_report`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class LabelSampler(Sampler[int]):
    """Base class: deterministic per (seed, epoch), DDP-sharded. Subclasses implement :meth:`draw`."""

    def __init__(
        self,
        labels: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.float32)
        if self.labels.ndim != 2 or len(self.labels) == 0:
            raise ValueError(f"sampler labels must be a non-empty (N, C) array, got shape {self.labels.shape}")
        self.num_samples = int(num_samples) if num_samples is not None else len(self.labels)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.seed = int(seed)
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank

    # ---- DDP topology (explicit, or read from torch.distributed when iterated)
    @property
    def num_replicas(self) -> int:
        return self._num_replicas if self._num_replicas is not None else _world()[0]

    @property
    def rank(self) -> int:
        return self._rank if self._rank is not None else _world()[1]

    def set_epoch(self, epoch: int) -> None:
        """Change the draw; the data loop calls this at the start of every epoch on every rank."""
        self.epoch = int(epoch)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The global sequence of ``num_samples`` dataset indices for one epoch."""
        raise NotImplementedError

    def epoch_rng(self) -> np.random.Generator:
        """The generator of the current (seed, epoch)."""
        return np.random.default_rng([self.seed, self.epoch])

    def global_indices(self) -> np.ndarray:
        """The whole epoch's sequence, identical on every rank."""
        seq = np.asarray(self.draw(self.epoch_rng()), dtype=np.int64)
        assert len(seq) == self.num_samples, (len(seq), self.num_samples)
        return seq

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    def __iter__(self):
        seq = self.global_indices()
        world, rank = self.num_replicas, self.rank
        total = len(self) * world
        if total > len(seq):
            seq = np.concatenate([seq, seq[: total - len(seq)]])
        return iter(seq[rank:total:world].tolist())


class RandomSampler(LabelSampler):
    """Plain shuffling: a permutation of the dataset (with wrap-around when ``num_samples`` is larger)."""

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        reps = -(-self.num_samples // n)
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.num_samples]


def positive_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean (N, C): label == 1 (0 and NaN are not positive)."""
    return np.asarray(labels, dtype=np.float32) == 1.0


def _active_classes(positive: np.ndarray, who: str) -> np.ndarray:
    """Indices of classes with a positive image; warn once about the others, raise if there are none."""
    counts = positive.sum(0)
    active = np.flatnonzero(counts > 0)
    if len(active) == 0:
        raise ValueError(
            f"{who}: no class has a positive image (labels {positive.shape}, all 0 or NaN); "
            "class-based sampling needs at least one positive label"
        )
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        warnings.warn(
            f"{who}: class(es) {empty.tolist()} have no positive image and are skipped by the sampler",
            stacklevel=3,
        )
    return active


class ClassSampler(LabelSampler):
    """Base of the samplers that visit a class, then draw a random positive image of it (Section 3.2)."""

    def __init__(
        self,
        labels: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(labels, num_samples, seed, num_replicas, rank)
        self.positive = positive_labels(self.labels)
        #: Classes with at least one positive image, in table order; the visited classes.
        self.active = _active_classes(self.positive, type(self).__name__)
        members = [np.flatnonzero(self.positive[:, c]) for c in self.active]
        self._count = np.array([len(m) for m in members], dtype=np.int64)
        self._offset = np.concatenate([[0], np.cumsum(self._count)[:-1]]).astype(np.int64)
        self._members = np.concatenate(members).astype(np.int64)

    def _images(self, visits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly random positive image (with replacement) of each visited active-class position."""
        return self._members[self._offset[visits] + rng.integers(0, self._count[visits])]

    def draw_with_classes(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's image indices and, for each draw, the class it was drawn for (table class index)."""
        raise NotImplementedError

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return self.draw_with_classes(rng)[0]


class CycleClassSampler(ClassSampler):
    """Class-balanced "cycle" sampling (Section 3.2; the release): classes in turn 0..C-1, 0..C-1, ..., each a
    random positive image, with replacement; p(j) = 1/C for the drawn class. Every epoch restarts at class 0.
    """

    def draw_with_classes(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        visits = np.arange(self.num_samples) % len(self.active)
        return self._images(visits, rng), self.active[visits]


class ClassAwareSampler(ClassSampler):
    """Class-aware sampling: like cycle (Section 3.2), but every round visits the classes in a fresh random order."""

    def draw_with_classes(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.active)
        rounds = -(-self.num_samples // k)
        visits = np.argsort(rng.random((rounds, k)), axis=1).reshape(-1)[: self.num_samples]
        return self._images(visits, rng), self.active[visits]


class LeastSampledClassSampler(ClassSampler):
    """Least-sampled (Sections 3.2, 5): each draw visits a class with the fewest positive labels drawn so far
    this epoch (ties at random), takes a random positive image of it and tallies all that image's labels.

    ``replacement=False`` draws each image at most once per epoch (the paper: "from the unselected pool"); a class
    whose images are all drawn is no longer visited, and the epoch cannot be longer than the number of images
    with a positive label (``num_samples`` defaults to that number then).
    """

    _CHUNK = 8192

    def __init__(
        self,
        labels: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        replacement: bool = True,
    ) -> None:
        super().__init__(labels, num_samples, seed, num_replicas, rank)
        self.replacement = bool(replacement)
        if not self.replacement:
            pool = int(self.positive[:, self.active].any(1).sum())
            if num_samples is None:
                self.num_samples = pool
            elif self.num_samples > pool:
                raise ValueError(
                    f"data.sampler.num_samples={self.num_samples} is longer than the {pool} images with a positive "
                    f"label that least_sampled without replacement can draw in an epoch: set "
                    f"data.sampler.num_samples<={pool}, or data.sampler.replacement=true"
                )

    def draw_with_classes(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not self.replacement:
            return self._draw_without_replacement(rng)
        n, k = self.num_samples, len(self.active)
        pos = self.positive[:, self.active].astype(np.float64)  # labels of the visited classes only
        pick = rng.random(n)
        visits = np.empty(n, dtype=np.int64)
        images = np.empty(n, dtype=np.int64)
        tally = np.zeros(k)
        members, offset, count = self._members, self._offset.tolist(), self._count.tolist()
        for start in range(0, n, self._CHUNK):
            # A uniform jitter in [0, 1) on integer tallies breaks ties at random without changing the minimum.
            jitter = rng.random((min(self._CHUNK, n - start), k))
            for i, row in enumerate(jitter, start):
                j = int(np.argmin(tally + row))
                img = int(members[offset[j] + min(int(pick[i] * count[j]), count[j] - 1)])
                tally += pos[img]
                visits[i], images[i] = j, img
        return images, self.active[visits]

    def _draw_without_replacement(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n, k = self.num_samples, len(self.active)
        pos = self.positive[:, self.active].astype(np.float64)
        pools = [rng.permutation(self._members[o : o + c]) for o, c in zip(self._offset, self._count, strict=True)]
        cursor = np.zeros(k, dtype=np.int64)
        drawn = np.zeros(len(self.labels), dtype=bool)
        tally, alive = np.zeros(k), np.ones(k, dtype=bool)
        visits, images = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for i in range(n):  # n <= images with a positive label: some visited class always has one left
            while True:
                j = int(np.argmin(np.where(alive, tally, np.inf) + rng.random(k)))
                pool = pools[j]
                while cursor[j] < len(pool) and drawn[pool[cursor[j]]]:
                    cursor[j] += 1  # drawn already, for another class
                if cursor[j] < len(pool):
                    break
                alive[j] = False  # every image of this class is drawn: not visited again this epoch
            images[i], visits[i] = pool[cursor[j]], j
            drawn[images[i]] = True
            tally += pos[images[i]]
        return images, self.active[visits]


class RepeatFactorSampler(LabelSampler):
    """Repeat-factor sampling (LVIS, Gupta et al. 2019; an extra to Section 3.2's samplers).

    f_c = share of training images positive for class c; r_c = max(1, sqrt(threshold / f_c)); an image repeats
    r_i = max of r_c over its positive labels (1 without any). Each round rounds r_i stochastically (floor plus a
    Bernoulli of the fraction) and shuffles; rounds are chained and cut to ``num_samples``. The natural epoch of
    RFS holds sum_i r_i images in expectation; ``num_samples=None`` still means the dataset size, as for the other
    samplers, so that epochs are comparable. ``threshold`` 0.1 (LVIS uses 0.001 over 1,203 classes) oversamples the
    CXR-LT classes rarer than 10 % of images, the rarest (0.16 %) about 8 times.
    """

    def __init__(
        self,
        labels: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        threshold: float = 0.1,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(labels, num_samples, seed, num_replicas, rank)
        if not threshold > 0:
            raise ValueError(f"repeat-factor threshold must be positive, got {threshold}")
        self.threshold = float(threshold)
        positive = positive_labels(self.labels)
        active = _active_classes(positive, type(self).__name__)
        freq = positive.sum(0) / len(positive)
        #: Per-class repeat factor r_c (1 for the skipped classes, which no image holds).
        self.class_factors = np.ones(positive.shape[1])
        self.class_factors[active] = np.maximum(1.0, np.sqrt(self.threshold / freq[active]))
        #: Per-image repeat factor r_i.
        self.repeat_factors = np.where(positive, self.class_factors, 1.0).max(1)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        r = self.repeat_factors
        base, frac = np.floor(r).astype(np.int64), r - np.floor(r)
        rounds, total = [], 0
        while total < self.num_samples:
            reps = base + (rng.random(len(r)) < frac)
            seq = rng.permutation(np.repeat(np.arange(len(r)), reps))
            rounds.append(seq)
            total += len(seq)
        return np.concatenate(rounds)[: self.num_samples]


class EvalShardSampler(Sampler[int]):
    """Evaluation order under DDP: rank r reads rows r, r + W, r + 2W, ... of the split — no padding, so no row is
    counted twice (the metric gathers all ranks and sorts by row index); on one process, every row in order."""

    def __init__(self, num_rows: int) -> None:
        self.num_rows = int(num_rows)

    def __iter__(self):
        world, rank = _world()
        return iter(range(rank, self.num_rows, world))

    def __len__(self) -> int:
        world, rank = _world()
        return len(range(rank, self.num_rows, world))


class AugmentationSeeds(Sampler[tuple[int, int]]):
    """Pairs every index of a training sampler with the seed of its augmentation, a function of (seed, epoch,
    global position): augmented images are then the same whatever the worker count, the ranks or a resumption."""

    def __init__(self, sampler: LabelSampler, seed: int = 0) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        #: Positions (of this rank) the next iteration skips, once: set by a loader resuming mid-epoch.
        self.skip = 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        world, rank, epoch = self.sampler.num_replicas, self.sampler.rank, self.sampler.epoch
        base = np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0]
        skip, self.skip = self.skip, 0
        for pos, index in enumerate(self.sampler):
            if pos < skip:
                continue
            yield index, int((int(base) + rank + pos * world) % (2**63))


if __name__ == "__main__":
    from mlgcn_lt.data.sampler_report import main

    raise SystemExit(main())

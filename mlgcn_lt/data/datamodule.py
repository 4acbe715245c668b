"""CXRDataModule: reads the split tables, computes training label statistics once, serves the loaders."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mlgcn_lt.data.cache import CachedImages, StoreIndex, open_cached, store_dir
from mlgcn_lt.data.config import (
    BadImagesConfig,
    ColumnsConfig,
    GroupSizes,
    LoaderConfig,
    SplitConfig,
    as_block,
    upgrade_legacy_keys,
)
from mlgcn_lt.data.dataset import ImageTableDataset, collate_skipping_bad
from mlgcn_lt.data.images import AugmentConfig, Resample, build_transform
from mlgcn_lt.data.leakage import check_split_leakage
from mlgcn_lt.data.resumable import ResumableLoader
from mlgcn_lt.data.samplers import AugmentationSeeds, EvalShardSampler, LabelSampler, RandomSampler
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.data.tables import ImageTable, TableError, TableFormat, read_table, split_by_group
from mlgcn_lt.data.validate import (
    BAD_IMAGES_FILE,
    BadImage,
    BadImagesError,
    check_root,
    describe,
    find_bad_images,
    write_bad_images,
)

log = logging.getLogger(__name__)

SamplerFactory = Callable[..., LabelSampler]
#: Splits only scored after training, with the chosen checkpoint (never for checkpoint choice, early stopping or
#: thresholds): ``dev`` (``dev_csv``) and ``test`` (``test_csv``). See docs/protocol.md.
REPORT_SPLITS = ("dev", "test")


class CXRDataModule(L.LightningDataModule):
    """Multi-label image tables → loaders; the training sampler is an injected factory ``(labels, seed) → Sampler``.

    Splits (docs/protocol.md): ``train``; ``val`` chooses checkpoints, stops early and tunes thresholds; the report
    splits ``dev`` and ``test`` are only scored after training. ``val_csv`` left empty is carved out of
    ``train_csv`` by patient (``split.val_fraction``), seeded; ``test_csv`` left empty is carved the same way when
    ``split.test_fraction`` > 0 (else there is no test split); ``dev_csv`` left empty means no dev split. A report
    split's file may lack the label columns (predictions only).
    With ``cache_dir`` set, every split reads the images decoded and resized once by
    ``python -m mlgcn_lt.data.preprocess`` (setup fails, naming the command, if any image is missing or stale).
    """

    def __init__(
        self,
        *,
        format: TableFormat,
        root: str,
        train_csv: str,
        val_csv: str | None = None,
        test_csv: str | None = None,
        dev_csv: str | None = None,
        image_size: int = 1024,
        resample: Resample = "bilinear",
        cache_dir: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        columns: ColumnsConfig = ColumnsConfig(),  # noqa: B008 (frozen, immutable)
        loader: LoaderConfig = LoaderConfig(),  # noqa: B008
        bad_images: BadImagesConfig = BadImagesConfig(),  # noqa: B008
        split: SplitConfig = SplitConfig(),  # noqa: B008
        groups: GroupSizes = GroupSizes(),  # noqa: B008
        augment: AugmentConfig = AugmentConfig(),  # noqa: B008
        sampler: SamplerFactory | None = None,
        synthetic: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.format = format
        self.root = Path(root)
        self.csvs = {"train": train_csv, "val": val_csv, "dev": dev_csv, "test": test_csv}
        self.image_size = int(image_size)
        self.resample: Resample = str(resample)  # type: ignore[assignment] (a Hydra enum member pickles badly)
        self.cache_dir = cache_dir
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.columns = as_block(ColumnsConfig, columns)
        self.loader = as_block(LoaderConfig, loader)
        #: Unreadable images: ``error`` stops (before training when the setup check finds them), ``skip`` drops them
        #: and lists them in ``<report_dir>/bad_images.csv``; never replaced by a made-up image.
        self.bad_images = as_block(BadImagesConfig, bad_images)
        self.split = as_block(SplitConfig, split)
        self.groups = as_block(GroupSizes, groups)
        self.augment = as_block(AugmentConfig, augment)
        self.reader_options = self.columns.reader_options(format)
        self.sampler_factory = sampler or RandomSampler
        self.synthetic = dict(synthetic) if synthetic else None
        self.seed = int(seed)
        self.skipped: list[BadImage] = []
        self.tables: dict[str, ImageTable] = {}
        self.cached: dict[str, CachedImages] = {}
        self.stats: LabelStats | None = None

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the val / dev / test loaders (``loader.eval_batch_size``, else ``batch_size``)."""
        return int(self.loader.eval_batch_size or self.batch_size)

    @property
    def report_dir(self) -> Path | None:
        return Path(self.bad_images.report_dir) if self.bad_images.report_dir else None

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else int(self.split.seed)

    def _fraction(self, split: str) -> float:
        return float(getattr(self.split, f"{split}_fraction"))

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Generate the embedded synthetic dataset once (cached, atomic) when this config asks for it."""
        if self.synthetic is not None:
            from mlgcn_lt.data import synthetic

            synthetic.ensure(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        self.tables = self._read_splits()
        for name, table in self.tables.items():
            if len(table) == 0:
                raise TableError(f"the {name} split has no images ({self.csvs[name] or 'carved from train_csv'})")
            if not table.has_labels and name not in REPORT_SPLITS:
                raise TableError(f"{table.source}: the {name} split needs labels, but the file has no label columns")
            if table.classes != self.tables["train"].classes:
                raise TableError(
                    f"{table.source}: classes differ from the training table's {self.tables['train'].classes}"
                )
        check_split_leakage(self.tables)  # no image (or carved patient) in two splits: metrics would leak
        if not self.cache_dir:  # a cache was checked when it was built; its images are not read from the source
            check_root(self.root, len(self.tables["train"]))
            self._check_images()
        if self.cache_dir:
            how = f"data.root={self.root} data.image_size={self.image_size} data.cache_dir={self.cache_dir}"
            store = store_dir(self.cache_dir, self.root, self.image_size, self.resample)
            index = StoreIndex.load(store, self.image_size)  # once for all splits
            self.cached = {
                s: open_cached(t, self.cache_dir, self.image_size, self.resample, how, index)
                for s, t in self.tables.items()
            }
        train = self.tables["train"]
        self.stats = LabelStats.from_labels(train.labels, train.classes, self.groups.head, self.groups.tail)
        log.info("data, %d classes: %s", len(train.classes), "; ".join(self.describe_splits().values()))

    def _check_images(self) -> None:
        """Open every image once (``bad_images.check``): stop naming every bad file, or drop them (``skip``)."""
        bad = {
            s: find_bad_images(t, self.bad_images.check, workers=max(self.num_workers, 1))
            for s, t in self.tables.items()
        }
        found = [b for items in bad.values() for b in items]
        if not found:
            return
        report = self.report_dir / BAD_IMAGES_FILE if self.report_dir else None
        if report is not None:
            write_bad_images(report, found)
        where = f" (all listed in {report})" if report else ""
        if self.bad_images.policy == "error":
            raise BadImagesError(
                f"{len(found)} image(s) cannot be read{where}:\n{describe(found)}\n"
                "Fix or remove them, or set data.bad_images.policy=skip to train without them."
            )
        for split, items in bad.items():
            if items:
                drop = {b.path for b in items}
                table = self.tables[split]
                keep = [i for i in range(len(table)) if str(table.image_path(i)) not in drop]
                self.tables[split] = table.subset(keep)
        self.skipped = found
        log.warning(
            "data.bad_images.policy=skip: dropped %d unreadable image(s)%s:\n%s", len(found), where, describe(found)
        )

    def read_sources(self) -> dict[str, ImageTable]:
        """The tables as read from the configured CSVs (before carving missing splits out of train).

        Report splits (``dev``, ``test``) may come without label columns; the others must have them.
        """
        if not self.csvs["train"]:
            raise TableError("data.train_csv is required")
        read = {}
        for s, p in self.csvs.items():
            if p:
                options = {**self.reader_options, "require_labels": s not in REPORT_SPLITS}
                read[s] = read_table(self.format, self._abs(p), self.root, **options)
        return read

    def carved_splits(self) -> list[str]:
        """The splits carved out of ``train_csv`` by patient: ``val`` without ``val_csv``, ``test`` without
        ``test_csv`` when ``split.test_fraction`` > 0."""
        carved = [] if self.csvs["val"] else ["val"]
        if not self.csvs["test"] and self.split.test_fraction > 0:
            carved.append("test")
        return carved

    def _read_splits(self) -> dict[str, ImageTable]:
        read = self.read_sources()
        missing = self.carved_splits()
        if missing:
            fractions = [self._fraction(s) for s in missing]
            if fractions[0] <= 0:
                raise TableError(f"data.split.{missing[0]}_fraction must be > 0 when data.{missing[0]}_csv is null")
            *parts, rest = split_by_group(read["train"], fractions, self.split_seed)
            full = read["train"]
            for s, idx in zip(missing, parts, strict=True):
                read[s] = full.subset(idx)
            read["train"] = full.subset(rest)
            if len(rest) == 0:
                n_groups = len(set(full.groups().astype(str).tolist()))
                raise TableError(
                    f"{full.source}: carving {' and '.join(missing)} out of it "
                    f"(data.split: {dataclasses.asdict(self.split)}) left no "
                    f"training images ({len(full)} rows, {n_groups} patients); give data.val_csv / data.test_csv "
                    "or lower data.split.*_fraction"
                )
        return {s: read[s] for s in ("train", "val", *REPORT_SPLITS) if s in read}

    def _abs(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() or path.exists() else self.root / path

    # ------------------------------------------------------------------ public surface
    @property
    def report_splits(self) -> list[str]:
        """The report-only splits of this data (``dev``, ``test``), those that exist, in that order."""
        self._need_setup()
        return [s for s in REPORT_SPLITS if s in self.tables]

    def has_labels(self, split: str) -> bool:
        """Whether ``split``'s file had label columns (a report split without them gets predictions only)."""
        self._need_setup()
        return self.tables[split].has_labels

    def describe_splits(self) -> dict[str, str]:
        """Where each split comes from and what it is used for (logged, and kept in ``metrics.json``)."""
        self._need_setup()
        train_csv = Path(self.csvs["train"]).name
        group = self.tables["train"].group_column or "row"
        role = {"train": "training", "val": "checkpoint choice, early stopping, thresholds"}
        out = {}
        for s, t in self.tables.items():
            if s in self.carved_splits():
                origin = f"carved from {train_csv} by {group} ({self._fraction(s):g}, seed {self.split_seed})"
            elif s == "train" and self.carved_splits():
                origin = f"{train_csv} minus {' and '.join(self.carved_splits())}"
            else:
                origin = Path(self.csvs[s]).name
            what = role.get(s, "report only" + ("" if t.has_labels else ", no labels: predictions only"))
            out[s] = f"{s}: {len(t)} images, {origin}, {what}"
        return out

    @property
    def classes(self) -> list[str]:
        self._need_setup()
        return list(self.tables["train"].classes)

    def _need_setup(self) -> None:
        if not self.tables:
            raise RuntimeError("CXRDataModule.setup() must run before classes / stats / loaders are used")

    def dataset(self, split: str, *, train_transform: bool | None = None) -> ImageTableDataset:
        self._need_setup()
        augment = self.augment if (train_transform if train_transform is not None else split == "train") else None
        skip = self.bad_images.policy == "skip"
        skip_log = (self.report_dir / BAD_IMAGES_FILE) if skip and self.report_dir else None
        return ImageTableDataset(
            self.tables[split],
            self.image_size,
            build_transform(augment),
            self.cached.get(split),
            self.resample,
            on_bad_image=self.bad_images.policy,
            skip_log=skip_log,
        )

    def build_sampler(self) -> LabelSampler:
        sampler = self.sampler_factory(labels=self.tables["train"].labels, seed=self.seed)
        if sampler.num_samples == 1:  # BatchNorm cannot train on a batch of one image
            log.warning("a single training image: every epoch draws it twice (BatchNorm needs 2 images per batch)")
            sampler.num_samples = 2
        return sampler

    def make_loader(
        self, dataset, *, batch_size: int, sampler=None, drop_last: bool = False, loader: type = DataLoader
    ) -> DataLoader:
        """A loader over ``dataset``; without ``sampler``, the rows in order (this rank's shard under DDP)."""
        workers = self.num_workers
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler if sampler is not None else EvalShardSampler(len(dataset)),
            shuffle=False,
            # A private generator: creating an iterator never consumes the global RNG (exact resumption).
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=workers,
            pin_memory=self.loader.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.loader.persistent_workers and workers > 0,
            prefetch_factor=self.loader.prefetch_factor if workers > 0 else None,
            drop_last=drop_last,
            collate_fn=collate_skipping_bad,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        sampler = AugmentationSeeds(self.build_sampler(), self.seed)
        # A last batch of one image breaks BatchNorm; drop the remainder when there is more than one batch.
        return self.make_loader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(sampler) > self.batch_size,
            loader=ResumableLoader,  # exact resumption with workers and mid-epoch checkpoints
        )

    def val_dataloader(self) -> DataLoader:
        return self.make_loader(self.dataset("val"), batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.report_dataloader("test")

    def report_dataloader(self, split: str) -> DataLoader:
        """Loader of an evaluation split in row order (``dev``, ``test``, or ``val``)."""
        return self.make_loader(self.dataset(split), batch_size=self.eval_batch_size)

    def labels(self, split: str) -> np.ndarray:
        self._need_setup()
        return self.tables[split].labels


def build_datamodule(data: DictConfig | Mapping[str, Any]) -> CXRDataModule:
    """Instantiate a ``data`` config (``cfg.data``, or the ``data`` of a run's saved ``config.yaml``).

    The data group's own keys (``max_epochs``: :data:`mlgcn_lt.config.schemas.GROUP_KEYS`) are left out, and the
    flat keys of configs saved before the typed blocks (``on_bad_image``, ``path_column``...) go into their blocks.
    """
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    from mlgcn_lt.config.schemas import split_group_keys

    args, _ = split_group_keys("data", upgrade_legacy_keys(data))
    return instantiate(args)

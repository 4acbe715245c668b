"""Decode every image of a data config once into the resize cache that ``data.cache_dir`` then reads.

Takes the same Hydra overrides as ``train.py`` (only ``data`` and ``paths`` matter)::

    python -m mlgcn_lt.data.preprocess data=cxr_lt data.root=/data/mimic-cxr-jpg data.image_size=1024 \\
        data.cache_dir=/fast/cache [--workers 16]
    python train.py data=cxr_lt data.root=/data/mimic-cxr-jpg data.image_size=1024 data.cache_dir=/fast/cache

Every image of every split table is decoded (JPEG draft mode), resized with ``data.resample`` and stored as raw
uint8 pixels under ``<cache_dir>/<size>px-<resample>-v<N>-<root hash>/``. Runs in parallel, resumes (images already
cached and unchanged are skipped), and is safe to interrupt (see :mod:`mlgcn_lt.data.cache`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mlgcn_lt.data.cache import CacheError, build_cache, table_paths
from mlgcn_lt.data.tables import TableError

log = logging.getLogger(__name__)


def compose_data(overrides: Sequence[str], config_name: str = "train"):
    """The ``data`` node of the real config, composed with ``overrides`` as ``train.py`` would."""
    return compose_train(overrides, config_name).data


def compose_train(overrides: Sequence[str], config_name: str = "train"):
    """The real config composed with ``overrides`` as ``train.py`` would, without a run directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mlgcn_lt.config import CONF_DIR, setup_config_system

    setup_config_system(CONF_DIR)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            # No run directory here: nothing to report into (``${paths.output_dir}`` needs Hydra's runtime).
            cfg = compose(config_name=config_name, overrides=[*overrides, "data.bad_images.report_dir=null"])
    finally:
        GlobalHydra.instance().clear()
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlgcn_lt.data.preprocess",
        description="Decode and resize every image of a data config once into data.cache_dir.",
        epilog="Other arguments are Hydra overrides of the training config, e.g. data=nih_cxr14_sample "
        "data.image_size=256 data.cache_dir=/fast/cache",
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from tqdm import tqdm

    from mlgcn_lt.data.datamodule import build_datamodule

    data = compose_data(overrides)
    if not data.get("cache_dir"):
        parser.error("set data.cache_dir=DIR (where the resized images go; the same value trains from them)")
    try:
        dm = build_datamodule(data)
        dm.prepare_data()  # the synthetic dataset is generated first when the config asks for it
        root, paths = table_paths(dm.read_sources().values())
        print(f"caching {len(paths)} images of {root} at {dm.image_size} px ({dm.resample}) into {dm.cache_dir}")
        with tqdm(total=len(paths), unit="img", disable=args.no_progress, dynamic_ncols=True) as bar:
            report = build_cache(
                paths, root, dm.cache_dir, dm.image_size, dm.resample, workers=args.workers, progress=bar.update
            )
            bar.update(report.cached)
    except (CacheError, TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{report.store}: {report.written} decoded, {report.cached} already cached, {len(report.failures)} failed "
        f"({report.seconds:.1f} s)"
    )
    for rel, msg in report.failures[:20]:
        print(f"  failed: {rel}: {msg}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""LongPerceptualThoughts as a ``datasets`` builder, plus the package's public Python API in one place.

``datasets`` 4+ no longer runs loading scripts from ``load_dataset``; drive the builder directly::

    from longperceptualthoughts import LongPerceptualThoughts
    b = LongPerceptualThoughts(config_name="sft", run_dir="runs/demo", cache_dir="/tmp/lpt-cache")
    b.download_and_prepare()
    sft = b.as_dataset(split="train")

or export a Hub-layout folder (``lpt export RUN OUT``) and use plain ``datasets.load_dataset(OUT, "sft")``,
or :func:`load` which also attaches the images (stored once, in the ``images`` config).

The configs and how each is built live in :mod:`builder.dataset_configs`; add one in a few lines::

    from longperceptualthoughts import ConfigSpec, SFT_FEATURES, register, assemble
    register(ConfigSpec("sft_x_o", SFT_FEATURES,
                        lambda cfg: [r for r in assemble.build_sft(cfg.run(), cfg.options) if r["cot_type"] == "X_O"],
                        "SFT rows that start from a wrong simple thought"))
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import datasets
import pyarrow as pa
from datasets import Image, List
from datasets.builder import Key
from datasets.utils.py_utils import classproperty

from builder import assemble
from builder.assemble import AssembleOptions
from builder.dataset_configs import (
    CONFIGS,
    DPO_FEATURES,
    IMAGES_FEATURES,
    LPT30K_FEATURES,
    MCQ_FEATURES,
    SFT_FEATURES,
    ConfigSpec,
    LPTConfig,
    config_batches,
    docci_image_path,
    read_lpt30k,
    register,
    run_configs,
    why_empty,
)
from builder.export import card_stats, export, push, render_card
from builder.importer import import_upstream

__version__ = "0.1.0"


class LongPerceptualThoughts(datasets.ArrowBasedBuilder):
    """SFT / DPO / MCQ / simple-CoT sets, images and raw stage records of a run; and the authors' release.

    The rows stream as Arrow tables: a set's record batches are the ones ``lpt export`` writes
    (:func:`builder.dataset_configs.config_batches`), with no Python dict per row."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = LPTConfig
    DEFAULT_CONFIG_NAME = "sft"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dataset_name", "longperceptualthoughts")
        super().__init__(*args, **kwargs)

    @classproperty
    @classmethod
    def BUILDER_CONFIGS(cls) -> list[LPTConfig]:  # noqa: N802 - datasets' name; derived: register() may add configs
        return [LPTConfig(name=s.name, version=cls.VERSION, description=s.description) for s in CONFIGS.values()]

    @classproperty
    @classmethod
    def builder_configs(cls) -> dict[str, LPTConfig]:  # not memoised, for the same reason
        return {c.name: c for c in cls.BUILDER_CONFIGS}

    def _info(self) -> datasets.DatasetInfo:
        spec = CONFIGS[self.config.name]
        return datasets.DatasetInfo(
            description=spec.description, features=spec.features,
            homepage="https://github.com/andrewliao11/LongPerceptualThoughts", license="apache-2.0",
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        if CONFIGS[self.config.name].from_run:
            self.config.run()  # a missing run directory fails here, with its own message
        if CONFIGS[self.config.name].check is not None:
            CONFIGS[self.config.name].check(self.config)  # so does a missing input (lpt30k's release)
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN)]

    def _generate_tables(self) -> Iterator[tuple[Key, pa.Table]]:
        for i, batch in enumerate(config_batches(self.config)):
            yield Key(0, i), pa.Table.from_batches([batch])

    def _as_dataset(self, split: Any = datasets.Split.TRAIN, in_memory: bool = False) -> datasets.Dataset:
        # datasets refuses a prepared split of zero rows ("Instruction train corresponds to no data"); an empty
        # set (e.g. SFT of a run with no X→O trace) is a valid answer: an empty Dataset with the declared features.
        info = self.info.splits.get(str(split)) if self.info.splits else None
        if info is not None and info.num_examples == 0:
            return datasets.Dataset.from_dict({k: [] for k in self.info.features}, features=self.info.features,
                                              info=self.info.copy(), split=info.name)
        return super()._as_dataset(split=split, in_memory=in_memory)

    def why_empty(self) -> str:
        """Why this config has no rows for its run (the config's own reason, or a generic one)."""
        return why_empty(self.config)


# ---------------------------------------------------------------------------------------------- loading


def attach_images(ds: datasets.Dataset, images: datasets.Dataset) -> datasets.Dataset:
    """Add an ``images`` column (``[image]``, TRL's convention) to ``ds`` by its ``image_id``."""
    lookup = dict(zip(images["image_id"], images.cast_column("image", Image(decode=False))["image"]))
    missing = sorted(set(ds["image_id"]) - set(lookup))
    if missing:
        raise KeyError(f"no image for image_id {missing[:5]} in the images config")
    features = ds.features.copy()
    features["images"] = List(Image())
    return ds.map(lambda b: {"images": [[lookup[i]] for i in b["image_id"]]}, batched=True, features=features)


def load(config: str, path_or_repo: str | os.PathLike, with_images: bool = True, split: str = "train",
         **kwargs: Any) -> datasets.Dataset:
    """``datasets.load_dataset(path_or_repo, config)`` on an exported folder or Hub repo, with images attached.

    Traces carry ``image_id``; the images live once in the ``images`` config and are joined here.
    """
    if not os.path.isdir(path_or_repo) and str(path_or_repo).count("/") != 1:
        raise ValueError(f"{path_or_repo}: no such folder here, and not a Hub repo id ORG/NAME (`lpt export RUN` "
                         f"writes ./longperceptualthoughts)")
    ds = datasets.load_dataset(str(path_or_repo), config, split=split, **kwargs)
    if not with_images or config == "images" or "image_id" not in ds.column_names:
        return ds
    if "images" not in datasets.get_dataset_config_names(str(path_or_repo)):
        raise ValueError(f"{path_or_repo} has no images config (it was exported without the source images): load "
                         f"the traces alone with with_images=False, or export a run whose source images are on the "
                         f"machine (lpt import-upstream --images-dir DOCCI/images)")
    return attach_images(ds, datasets.load_dataset(str(path_or_repo), "images", split=split, **kwargs))


__all__ = [
    "AssembleOptions", "CONFIGS", "ConfigSpec", "DPO_FEATURES", "IMAGES_FEATURES", "LPT30K_FEATURES", "LPTConfig",
    "LongPerceptualThoughts", "MCQ_FEATURES", "SFT_FEATURES", "assemble", "attach_images",
    "card_stats", "docci_image_path", "export", "import_upstream", "load", "push", "read_lpt30k", "register",
    "render_card", "run_configs",
]

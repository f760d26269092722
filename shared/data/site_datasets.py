"""The data each declared site holds, checked against the task it is given.

A task can only go to a site whose data carries its labels (finding labels, lung masks, boxes),
and every site of the classification task must know the same classes: the classes come from the
data, never from a default, so `num_classes` always matches what the sites hold.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import (
    CXRDataset,
    folder_dataset,
    phantom_dataset,
    with_class_names,
)
from festa.shared.federation_file import FederationFile, FederationFileError, SiteDeclaration
from festa.shared.tasks import get_task
from festa.shared.train.task_model import task_indices

LABELS_NEEDED = {
    "classification": "finding labels",
    "segmentation": "lung masks",
    "detection": "boxes",
}


@dataclass
class SiteDatasets:
    """A declared site with its train and val data (labels on the task's class names)."""

    declaration: SiteDeclaration
    train: CXRDataset
    val: CXRDataset


@dataclass
class ResolvedFederation:
    """Every site's data, and the class and box-class names the model must have."""

    sites: list[SiteDatasets]
    class_names: tuple[str, ...]
    box_class_names: tuple[str, ...]

    def model_config(self, config: ModelConfig) -> ModelConfig:
        """`config` with the federation's class names and counts."""
        return with_class_names(config, self.class_names, self.box_class_names)


@lru_cache(maxsize=8)
def _folder(root: str, split: str, size: int) -> CXRDataset:
    # Sites that share a folder (and virtual clients that share a process) share one copy.
    return folder_dataset(root, size=size, split=split)


def _in_shard(patient: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    k, n = shard
    return zlib.crc32(patient.encode()) % n == k - 1  # stable across processes and runs


def declared_site_data(
    site: SiteDeclaration, split: str, image_size: int, seed: int = 0
) -> CXRDataset:
    """Site `site`'s rows of `split` (its site filter and patient shard applied), labels as in
    the folder's manifest. A phantom site gets its own phantom set, seeded by its id."""
    if site.data == "phantoms":
        site_seed = seed + sum(site.id.encode())
        if split == "train":
            return phantom_dataset(site.phantoms, image_size, site_seed, site=site.id)
        return phantom_dataset(max(site.phantoms // 3, 1), image_size, site_seed + 100_003, site.id)
    pool = _folder(site.data, split, image_size)
    keep = set(site.sites) if site.sites is not None else None
    picked = [
        i
        for i, s in enumerate(pool.samples)
        if (keep is None or s["site"] in keep) and _in_shard(s["patient"], site.shard)
    ]
    return pool.subset(picked)


def resolve_federation(
    fed: FederationFile,
    image_size: int,
    seed: int = 0,
    train_split: str = "train",
    val_split: str = "val",
) -> ResolvedFederation:
    """Load every site's data and check it against its task; raises FederationFileError."""
    loaded = []
    for site in fed.site:
        train = declared_site_data(site, train_split, image_size, seed)
        val = declared_site_data(site, val_split, image_size, seed)
        if len(train) == 0:
            raise FederationFileError(f"site {site.id}: no {train_split} images match its filter")
        loaded.append((site, train, val))
    class_names = _class_names(loaded)
    sites = []
    for site, train, val in loaded:
        # Every site's labels on the task's classes (other findings: no classification label).
        train = train.subset(range(len(train)), class_names)
        val = val.subset(range(len(val)), class_names)
        task = get_task(site.task)
        if len(task_indices(train, task)) == 0:
            raise FederationFileError(
                f"site {site.id}: task {site.task} needs {LABELS_NEEDED[site.task]}, but none of "
                f"its {len(train)} {train_split} images has them; give it another task"
            )
        sites.append(SiteDatasets(site, train, val))
    box_names = {s.train.box_class_names for s in sites if s.declaration.task == "detection"}
    if len(box_names) > 1:
        raise FederationFileError(
            f"detection sites disagree on box classes: {sorted(map(list, box_names))}"
        )
    box_class_names = box_names.pop() if box_names else sites[0].train.box_class_names
    return ResolvedFederation(sites, class_names, box_class_names)


def _class_names(loaded: list[tuple[SiteDeclaration, CXRDataset, CXRDataset]]) -> tuple[str, ...]:
    """The classification task's class names: what its sites' data hold, the same at every site."""
    per_site: dict[str, tuple[str, ...]] = {}
    for site, train, val in loaded:
        if site.task != "classification":
            continue
        present = train.label_names | val.label_names
        if site.classes is not None:
            unknown = set(site.classes) - set(train.class_names)
            if unknown:
                raise FederationFileError(
                    f"site {site.id}: classes {sorted(unknown)} are not labels of its data "
                    f"(it has {sorted(train.class_names)})"
                )
            present &= set(site.classes)
        names = tuple(sorted(present))
        if len(names) < 2:
            raise FederationFileError(
                f"site {site.id}: classification needs at least 2 classes at each site, its data "
                f"holds {list(names)}; a single-class site adds nothing to a within-site AUC "
                "and teaches the site, not the finding"
            )
        per_site[site.id] = names
    if not per_site:
        return tuple(loaded[0][1].class_names)
    if len(set(per_site.values())) > 1:
        listing = "; ".join(f"{sid}: {list(n)}" for sid, n in per_site.items())
        raise FederationFileError(
            "the classification sites disagree on their classes (num_classes must be the same "
            f"at every site of a task): {listing}. Set `classes` on the sites to the shared ones"
        )
    return next(iter(per_site.values()))


def site_indices(site: SiteDatasets) -> tuple[np.ndarray, np.ndarray]:
    """Train and val indices of the samples that carry the site's task labels."""
    task = get_task(site.declaration.task)
    return task_indices(site.train, task), task_indices(site.val, task)

"""Data for tasks: an in-memory :class:`Dataset`, loaders from files, and partitioners.

``load_dataset(path)`` reads CSV, NPZ, IDX (MNIST) files or an image folder;
``partition(dataset, scheme, num_nodes)`` splits it into per-node index arrays
(``iid``, ``contiguous``, ``dirichlet``, ``shards``, ``natural``).
"""

from __future__ import annotations

from potluck.tasks.data.dataset import Dataset
from potluck.tasks.data.loaders import load_dataset, read_idx
from potluck.tasks.data.partition import contiguous, dirichlet, iid, label_shards, natural, partition

__all__ = [
    "Dataset",
    "contiguous",
    "dirichlet",
    "iid",
    "label_shards",
    "load_dataset",
    "natural",
    "partition",
    "read_idx",
]

"""digits-flipped: scikit-learn's 8x8 digits mirrored left to right, a dataset registered from outside repbench."""

from __future__ import annotations

from dataclasses import replace

from bench.data import DATASETS, Dataset, load_dataset


@DATASETS.register("digits-flipped")
def digits_flipped(data_root: str | None = None) -> Dataset:
    ds = load_dataset("digits", data_root)
    return replace(ds, name="digits-flipped", train_x=ds.train_x.flip(-1), test_x=ds.test_x.flip(-1),
                   source=f"{ds.source}, mirrored")

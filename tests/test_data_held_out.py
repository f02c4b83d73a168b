"""The held-out split of the embedded photos (notebooks evaluate on photos they never trained on)."""
import pytest
import torch

from csa_lib.data import EMBEDDED_PHOTOS, HELD_OUT_PHOTOS, EmbeddedDataset, embedded_photos, held_out_split
from csa_lib.masks import center_mask


def test_split_is_a_partition_of_the_photos():
    train, ev = held_out_split("train"), held_out_split("eval")
    assert ev == HELD_OUT_PHOTOS and len(ev) == 2
    assert set(train).isdisjoint(ev) and set(train) | set(ev) == set(EMBEDDED_PHOTOS)
    with pytest.raises(ValueError, match="split"):
        held_out_split("test")


def test_dataset_crops_only_the_named_photos():
    ds = EmbeddedDataset(16, center_mask(16), n=20, seed=0, photos=held_out_split("train"))
    held = [embedded_photos()[EMBEDDED_PHOTOS.index(n)] for n in HELD_OUT_PHOTOS]
    assert all(all(p is not h for h in held) for p in ds.photos) and len(ds.photos) == 5
    only = EmbeddedDataset(16, center_mask(16), n=4, seed=0, photos=["coffee"])
    assert only.photos == [embedded_photos()[EMBEDDED_PHOTOS.index("coffee")]]
    # the default keeps every photo and the same items as before
    a, b = EmbeddedDataset(16, center_mask(16), n=4, seed=0), EmbeddedDataset(16, center_mask(16), n=4, seed=0,
                                                                             photos=EMBEDDED_PHOTOS)
    assert torch.equal(a[3][0], b[3][0])
    for bad in (["lena"], []):
        with pytest.raises(ValueError, match="photos must be"):
            EmbeddedDataset(16, center_mask(16), photos=bad)

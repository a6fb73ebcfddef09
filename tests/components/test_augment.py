import torch

from components.augment import augment_batch
from components.config import AugmentConfig


def test_disabled_is_identity() -> None:
    x = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    assert augment_batch(x, AugmentConfig(enabled=False), torch.Generator()) is x


def test_crop_shifts_content_and_replays_from_the_seed() -> None:
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255  # a bright square in the middle
    config = AugmentConfig(enabled=True, crop_padding=2)
    a = augment_batch(x, config, torch.Generator().manual_seed(7))
    b = augment_batch(x, config, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    # every view keeps the whole square (shift <= 2 px), and some views moved it
    assert (a.flatten(1) == 255).sum(1).eq(4).all()
    assert not torch.equal(a, x)


def test_flip_mirrors_some_images() -> None:
    x = torch.zeros(64, 1, 4, 4, dtype=torch.uint8)
    x[..., 0] = 9  # left column
    out = augment_batch(
        x,
        AugmentConfig(enabled=True, crop_padding=0, horizontal_flip=True),
        torch.Generator().manual_seed(0),
    )
    flipped = out[..., 3].eq(9).all(dim=(1, 2))
    assert 0 < flipped.sum() < 64

import numpy as np
import torch

from components.augment import (
    STRONG_OPS,
    _strong_op,
    apply_strong,
    apply_views,
    augment,
    choose_views,
    render_strong_views,
    render_views,
    strong_params,
    view_hash,
    view_params,
    view_targets,
)
from components.config import AugmentConfig, StrongAugment

CROP_FLIP = AugmentConfig(enabled=True, crop_padding=2, horizontal_flip=True)


def test_disabled_is_identity() -> None:
    x = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    assert augment(x, AugmentConfig(enabled=False), 0, np.arange(4), 0) is x


def test_a_view_is_a_pure_function_of_seed_sample_and_view_number() -> None:
    ids = np.array([5, 17, 900])
    a = view_hash(3, ids, 2)
    # the same coordinates in another order or batch give the same value
    assert view_hash(3, ids[::-1], 2)[::-1].tolist() == a.tolist()
    assert view_hash(3, ids[1:2], 2)[0] == a[1]
    # each coordinate matters
    assert (view_hash(4, ids, 2) != a).all()
    assert (view_hash(3, ids, 3) != a).all()
    assert len(set(view_hash(3, np.arange(1000), 0).tolist())) == 1000


def test_view_replay_is_bit_exact_in_any_batch() -> None:
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    ids = np.arange(100, 106)
    views = np.array([0, 1, 2, 0, 1, 2])
    together = augment(images, CROP_FLIP, 11, ids, views)
    for i in range(6):
        alone = augment(images[i : i + 1], CROP_FLIP, 11, ids[i : i + 1], views[i : i + 1])
        assert torch.equal(alone[0], together[i])


def test_crop_keeps_content_and_moves_it() -> None:
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255  # a bright square in the middle
    out = augment(x, AugmentConfig(enabled=True, crop_padding=2), 0, np.arange(64), 0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out.flatten(1) == 255).sum(1).eq(4).all()  # shift <= 2 px keeps the square whole
    assert not torch.equal(out, x)


def test_explicit_offsets_crop_where_told() -> None:
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    params = view_params(AugmentConfig(enabled=True, crop_padding=1), 0, np.array([0]), 0)
    shifted = apply_views(
        x, type(params)(dy=np.array([2]), dx=np.array([1]), flip=np.array([False])), 1
    )
    # dy=2 on padding 1 moves the image up one row: row 0 of the output is row 1 of the input
    assert shifted[0, 0, 0].tolist() == x[0, 0, 1].tolist()
    assert shifted[0, 0, 3].tolist() == [0, 0, 0, 0]


def test_flip_only_when_allowed() -> None:
    ids = np.arange(200)
    assert not view_params(AugmentConfig(enabled=True), 0, ids, 0).flip.any()
    flips = view_params(CROP_FLIP, 0, ids, 0).flip
    assert 50 < flips.sum() < 150


def test_choose_views_is_deterministic_and_covers_the_pool() -> None:
    ids = np.arange(1000)
    first = choose_views(0, ids, epoch=1, views=4)
    assert np.array_equal(first, choose_views(0, ids, epoch=1, views=4))
    assert not np.array_equal(first, choose_views(0, ids, epoch=2, views=4))
    assert set(first.tolist()) == {0, 1, 2, 3}
    assert choose_views(0, ids, epoch=5, views=1).tolist() == [0] * 1000


def test_mixup_views_replay_and_mix_two_samples() -> None:
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    train = np.arange(1000, 1050)  # dataset indices of the 50 training rows
    config = AugmentConfig(enabled=True, crop_padding=1, mixup_alpha=0.4)
    rows = np.array([3, 7, 11])
    a = render_views(lambda r: images[r], rows, train, 2, config, seed=5)
    b = render_views(lambda r: images[r], rows, train, 2, config, seed=5)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.float32
    assert np.array_equal(a.partner_rows, b.partner_rows) and np.array_equal(a.weight, b.weight)
    assert ((a.weight >= 0) & (a.weight <= 1)).all()
    # the mixed image is exactly lambda * own view + (1 - lambda) * partner's view
    own = augment(images[rows], config, 5, train[rows], 2).float()
    partner = augment(images[a.partner_rows], config, 5, train[a.partner_rows], 2).float()
    w = torch.as_tensor(a.weight)[:, None, None, None]
    assert torch.allclose(a.images, w * own + (1 - w) * partner)
    targets = view_targets(a, labels[rows], labels, 10)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets[0, labels[3]] >= a.weight[0] - 1e-6
    # without mixup: plain uint8 views and class-index targets
    plain = render_views(lambda r: images[r], rows, train, 2, AugmentConfig(enabled=True), 5)
    assert plain.partner_rows is None and plain.images.dtype == torch.uint8
    assert torch.equal(view_targets(plain, labels[rows], labels, 10), labels[rows])


STRONG = AugmentConfig(enabled=True, crop_padding=2, strong=StrongAugment(ops=2, magnitude=1.0))


def _digits(n: int) -> torch.Tensor:
    """Images with structure (a bright square on black), so every operation changes them."""
    images = torch.zeros(n, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 5:11] = 200
    images[:, :, 6:10, 7:9] = 90
    return images


def test_strong_views_replay_bit_exact_in_any_batch_and_differ_by_view() -> None:
    images = _digits(8)
    train = np.arange(500, 508)
    rows = np.arange(8)
    views = np.array([0, 1, 2, 3, 0, 1, 2, 3])

    def fetch(r: np.ndarray) -> torch.Tensor:
        return images[r]

    together = render_strong_views(fetch, rows, train, views, STRONG, 5)
    assert together.dtype == torch.uint8 and together.shape == images.shape
    for i in (7, 0, 3):  # alone, in another order: the same bytes
        alone = render_strong_views(fetch, rows[i : i + 1], train, views[i : i + 1], STRONG, 5)
        assert torch.equal(alone[0], together[i])
    # the strong view is laid over the weak view of the same number
    weak = render_views(fetch, rows, train, views, STRONG, 5).images
    params = strong_params(STRONG.strong, 5, train[rows], views)  # type: ignore[arg-type]
    assert torch.equal(apply_strong(weak, params), together)
    # other views, other seeds: other images
    moved = render_strong_views(fetch, rows, train, views + 1, STRONG, 5)
    assert sum(not torch.equal(a, b) for a, b in zip(moved, together, strict=True)) >= 6
    other_seed = render_strong_views(fetch, rows, train, views, STRONG, 6)
    assert not torch.equal(other_seed, together)


def test_every_strong_operation_changes_an_image_and_keeps_it_uint8() -> None:
    images = _digits(1).float()
    strength, sign = torch.tensor([0.9]), torch.tensor([1.0])
    centre = torch.tensor([[0.5, 0.5]])
    for name in STRONG_OPS[1:]:
        out = _strong_op(name, images, strength, sign, centre)
        assert out.shape == images.shape
        assert not torch.equal(out.round().clamp(0, 255), images), name
    # over many draws the policy uses every operation
    params = strong_params(StrongAugment(ops=2), 0, np.arange(2000), 0)
    assert set(params.ops.ravel().tolist()) == set(range(len(STRONG_OPS)))
    assert params.strength.max() <= 0.5 and params.strength.min() >= 0

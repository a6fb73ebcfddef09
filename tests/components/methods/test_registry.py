"""The registry of methods: every kind of the config's union has a module that implements the
protocol, and the views a method needs are checked against the augmentation."""

import math

import pytest
import torch

from components.config import DistillConfig, PipelineConfig, load_config
from components.config import kinds as config_kinds
from components.methods import Method, cache_readings, check_views, distillation_loss, method_of


def test_every_method_of_the_union_has_its_module() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    kinds = config_kinds(DistillConfig)
    assert len(kinds) >= 5
    for kind in kinds:
        config = kind()
        method = method_of(config)
        assert isinstance(method, Method)
        strong = (zs, zt) if method.two_views else None
        out = distillation_loss(zs, zt, y, config, 1.0, strong=strong)
        assert math.isfinite(out.total.item()) and out.parts["kd"].item() > 0, kind.kind


def test_views_are_checked_against_the_method() -> None:
    check_views(PipelineConfig())  # the default: one view, a one-view method
    with pytest.raises(ValueError, match=r"student\.train\.augment\.strong"):
        check_views(load_config(None, ["distill.kind=mlkd"]))
    with pytest.raises(ValueError, match="two-view methods only"):
        check_views(load_config(None, ["student.train.augment.strong={}"]))
    check_views(load_config(None, ["distill.kind=mlkd", "student.train.augment.strong={}"]))


def test_a_top_k_cache_holds_the_readings_of_the_method_and_a_full_one_none() -> None:
    assert cache_readings(PipelineConfig()) is None
    topk = load_config(None, ["cache.storage=topk", "distill={kind: wttm, power: 0.5}"])
    assert cache_readings(topk) == [(1.0, False), (2.0, False)]

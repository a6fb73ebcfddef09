"""The recipes every caller trains through: the view rule and the seed decide the weights."""

from dataclasses import replace

import pytest
import torch

from components.augment import stream_seed
from components.config import PipelineConfig, load_config
from components.data import Dataset
from components.recipes import fit, student_recipe, teacher_recipe

CPU = torch.device("cpu")


def test_teacher_and_students_follow_the_view_rule() -> None:
    config = PipelineConfig()
    teacher = teacher_recipe(config)
    # a fresh view every epoch, from a stream of its own
    assert teacher.view_pool is None and teacher.view_seed == stream_seed(0, "teacher-views")
    assert teacher.arch == "resnet_small" and teacher.distill is None
    baseline, distilled = student_recipe(config, False), student_recipe(config, True)
    # both students: the same budget, seed and K cached views; only the targets differ
    assert replace(baseline, distill=distilled.distill) == distilled
    assert baseline.view_pool == config.cache.views and baseline.view_seed == config.seed
    assert baseline.distill is None and distilled.distill == config.distill


def test_fit_is_deterministic_and_refuses_a_recipe_without_its_targets(
    mnist_dataset: Dataset,
) -> None:
    config = load_config(
        None, ["student.model.name=cnn_tiny", "student.train.epochs=1", "cache.views=1"]
    )
    recipe = student_recipe(config, distilled=False)
    first, result = fit(recipe, mnist_dataset, CPU)
    again, _ = fit(recipe, mnist_dataset, CPU)
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not first.training and result.final["test_accuracy"] > 0.15
    with pytest.raises(ValueError, match="teacher's logits"):
        fit(student_recipe(config, distilled=True), mnist_dataset, CPU)

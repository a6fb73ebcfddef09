"""An ONNX classifier, checked and copied, its class names read from its metadata."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from components.config import OnnxTeacher
from components.io import sha256_file, sha256_files
from components.teacher_sources import source_of
from components.teachers import TeacherError, load_teacher
from tests.components.teacher_sources.conftest import SPEC, FileRegistry


def _export(model: nn.Module, path: Path, classes: list[str] | None) -> Path:
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    if classes is not None:
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "class_labels", json.dumps(classes)
        onnx.save(proto, str(path))
    return path


def test_an_onnx_file_is_checked_copied_and_its_classes_read(
    classifier: nn.Module, tmp_path: Path
) -> None:
    path = _export(classifier, tmp_path / "teacher.onnx", [f"c{i}" for i in range(10)])
    config = OnnxTeacher(path=path)
    source = source_of(config)
    brought = source.bring_in(config, SPEC, tmp_path / "in", FileRegistry({}))
    assert brought.format == "onnx" and brought.class_names == [f"c{i}" for i in range(10)]
    assert sha256_file(brought.path) == sha256_file(path) and brought.extra_files == ()
    x = torch.randn(1, 1, 28, 28)
    assert torch.allclose(load_teacher(brought.path, "onnx")(x), classifier(x), atol=1e-4)
    assert source.identity(config, FileRegistry({})) == {"sha256": sha256_files([path])}
    assert source.describe(config, brought) == "onnx teacher.onnx"


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "teacher.onnx"
    path.write_bytes(b"\x00not a model")
    with pytest.raises(TeacherError, match="not a valid ONNX model"):
        source_of(OnnxTeacher(path=path)).bring_in(
            OnnxTeacher(path=path), SPEC, tmp_path / "in", FileRegistry({})
        )


def test_an_export_at_torchs_defaults_external_data_and_a_fixed_batch(
    classifier: nn.Module, tmp_path: Path
) -> None:
    # torch.onnx.export at its defaults: weights in <name>.onnx.data, batch fixed at 1
    exported = tmp_path / "exported"
    exported.mkdir()
    torch.onnx.export(classifier, (torch.zeros(1, 1, 28, 28),), str(exported / "teacher.onnx"))
    assert (exported / "teacher.onnx.data").is_file()
    for given, into in ((exported / "teacher.onnx", "a"), (exported, "b")):  # file or directory
        config = OnnxTeacher(path=given)
        brought = source_of(config).bring_in(config, SPEC, tmp_path / into, FileRegistry({}))
        assert [f.name for f in brought.extra_files] == ["teacher.onnx.data"]
        assert brought.extra_files[0].read_bytes() == (exported / "teacher.onnx.data").read_bytes()
        # a batch of any size, though the model's is fixed at 1
        x = torch.randn(5, 1, 28, 28)
        assert torch.allclose(load_teacher(brought.path, "onnx")(x), classifier(x), atol=1e-4)
    # the identity covers the weights: new external data is a new teacher
    before = source_of(OnnxTeacher(path=exported)).identity(OnnxTeacher(path=exported), None)
    data = exported / "teacher.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    after = source_of(OnnxTeacher(path=exported)).identity(OnnxTeacher(path=exported), None)
    assert before != after
    # without its data the model is refused, naming the missing file
    data.unlink()
    with pytest.raises(TeacherError, match=r"teacher\.onnx\.data, which does not exist"):
        source_of(OnnxTeacher(path=exported)).bring_in(
            OnnxTeacher(path=exported), SPEC, tmp_path / "none", FileRegistry({})
        )


def test_a_float16_model_is_fed_float16_and_gives_float32(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((784, 10)).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["n", 10])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    config = OnnxTeacher(path=path)
    brought = source_of(config).bring_in(config, SPEC, tmp_path / "in", FileRegistry({}))
    x = torch.randn(3, 1, 28, 28)
    out = load_teacher(brought.path, "onnx")(x)
    assert out.dtype == torch.float32 and out.shape == (3, 10)
    expected = x.numpy().astype(np.float16).reshape(3, -1).astype(np.float32) @ weight.astype(
        np.float32
    )
    assert np.allclose(out.numpy(), expected, rtol=1e-2, atol=0.1)

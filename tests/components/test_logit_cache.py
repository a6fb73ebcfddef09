import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from components.augment import augment, render_strong_views, render_views
from components.checkpoint import save_checkpoint
from components.config import AugmentConfig, CacheConfig, SplitConfig, StrongAugment
from components.data import Dataset, normalize, split_images
from components.logit_cache import (
    CacheError,
    CacheSpec,
    TopKReadings,
    build_logit_cache,
    encode,
    index_dtype,
    open_logit_cache,
    resolve_runtime,
)
from components.losses import standardize
from components.models import build_model
from components.teachers import InputSpec, TeacherView

CPU = torch.device("cpu")
VIEWS = AugmentConfig(enabled=True, crop_padding=2)


@pytest.fixture
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_tiny", 1, 10).eval()


def spec_for(dataset: Dataset, teacher_sha: str = "a" * 64, **cache: object) -> CacheSpec:
    config = CacheConfig(**{"views": 3, **cache})
    readings = [(4.0, False)] if config.storage == "topk" else None
    return CacheSpec.create(
        teacher_sha, dataset.info.fingerprint, VIEWS, 7, config, readings=readings
    )


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix == ".npy"}


def test_cached_logits_are_the_teachers_output_on_the_replayed_views(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    spec = spec_for(mnist_dataset)
    info = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 700, CPU)
    assert not info.cache_hit and info.views == 3 and info.bytes_per_sample_view == 20
    cache = open_logit_cache(Path(info.path), expected_key=spec.key)
    n = len(mnist_dataset.splits["train"])
    assert cache.arrays["logits"].shape == (n, 3, 10)
    assert isinstance(cache.arrays["logits"], np.memmap)
    # regenerate views independently of the cache and compare, for random rows and views
    rows = np.array([0, 1234, 3999, 17])
    views = np.array([2, 0, 1, 2])
    # views are seeded by each image's content id, not by where it lies
    sample_ids = mnist_dataset.train_ids()[rows]
    raw = torch.as_tensor(mnist_dataset.images[mnist_dataset.splits["train"][rows]])
    with torch.no_grad():
        expected = teacher(normalize(augment(raw, VIEWS, 7, sample_ids, views), mnist_dataset.info))
    assert torch.allclose(cache.logits(rows, views), expected, atol=1e-2, rtol=1e-3)
    # distinct views really are distinct inputs
    assert not torch.allclose(cache.logits(rows, views), cache.logits(rows, (views + 1) % 3))
    manifest = json.loads((Path(info.path) / "manifest.json").read_text())
    assert manifest["spec"]["teacher_sha256"] == "a" * 64
    assert manifest["spec"]["dataset_fingerprint"] == mnist_dataset.info.fingerprint
    assert manifest["spec"]["augment"] == VIEWS.model_dump(mode="json")
    assert manifest["spec"]["view_seed"] == 7 and manifest["views"] == 3
    assert len(manifest["chunks"]) == -(-n // 700)  # the rows in chunks of 700
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", info.key]


def test_same_spec_is_a_cache_hit_and_each_input_changes_the_key(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    first = build_logit_cache(teacher, spec_for(mnist_dataset), mnist_dataset, tmp_path, 1000, CPU)
    again = build_logit_cache(teacher, spec_for(mnist_dataset), mnist_dataset, tmp_path, 1000, CPU)
    assert again.cache_hit and again.key == first.key and again.build_seconds == first.build_seconds
    base = spec_for(mnist_dataset)
    variants = [
        spec_for(mnist_dataset, teacher_sha="b" * 64),
        spec_for(mnist_dataset, views=4),
        spec_for(mnist_dataset, storage="topk"),
        spec_for(mnist_dataset, dtype="float32"),
        CacheSpec.create("a" * 64, base.dataset_fingerprint, VIEWS, 8, CacheConfig(views=3)),
        CacheSpec.create(
            "a" * 64,
            base.dataset_fingerprint,
            AugmentConfig(enabled=True, crop_padding=3),
            7,
            CacheConfig(views=3),
        ),
        CacheSpec.create("a" * 64, "other-data", VIEWS, 7, CacheConfig(views=3)),
    ]
    assert len({base.key, *(v.key for v in variants)}) == 1 + len(variants)


def test_opening_with_another_key_is_refused(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    info = build_logit_cache(teacher, spec_for(mnist_dataset), mnist_dataset, tmp_path, 1000, CPU)
    with pytest.raises(CacheError, match="does not match the request"):
        open_logit_cache(Path(info.path), expected_key="0" * 16)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_corrupt_or_truncated_cache_is_detected_and_rebuilt(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module, damage: str
) -> None:
    spec = spec_for(mnist_dataset)
    info = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 1000, CPU)
    good = files(Path(info.path))
    path = Path(info.path) / "logits.npy"
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 100]
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"logits\.npy"):
        open_logit_cache(Path(info.path))
    rebuilt = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 1000, CPU)
    assert not rebuilt.cache_hit
    assert files(Path(rebuilt.path)) == good


def test_interrupted_build_resumes_and_gives_the_same_bytes(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    spec = spec_for(mnist_dataset)
    whole = build_logit_cache(teacher, spec, mnist_dataset, tmp_path / "whole", 500, CPU)

    calls: list[int] = []

    def stop_after_three(done: int, total: int) -> None:
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_logit_cache(
            teacher, spec, mnist_dataset, tmp_path / "resumed", 500, CPU, stop_after_three
        )
    assert not (tmp_path / "resumed" / spec.key).exists()  # nothing visible under the final name
    calls.clear()
    resumed = build_logit_cache(
        teacher, spec, mnist_dataset, tmp_path / "resumed", 500, CPU, lambda d, t: calls.append(d)
    )
    chunks = -(-len(mnist_dataset.splits["train"]) // 500)
    assert calls == list(range(4, chunks + 1))  # only the chunks after the last complete one
    assert files(Path(resumed.path)) == files(Path(whole.path))


READINGS = [(1.0, False), (4.0, False), (8.0, False), (4.0, True)]


def topk_spec(classes_k: int, dtype: str = "float32") -> CacheSpec:
    config = CacheConfig(views=1, storage="topk", top_k=classes_k, dtype=dtype)
    return CacheSpec.create("a" * 64, "data", VIEWS, 7, config, readings=READINGS)


def test_topk_rebuilds_the_top_classes_and_the_leftover_mass_exactly() -> None:
    # The case: 100 classes, k = 5, a tail spread of 2. The mean of the leftover
    # logits would put 0.020 where the teacher has 0.102 at T = 1 (Jensen's inequality).
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1, 100, generator=generator) * 2.0
    logits[:, :, :5] += 6.0  # five clear favourites
    spec = topk_spec(5)
    readings = TopKReadings.decode(encode(logits, spec, 100), spec, 100)
    flat = logits[:, 0]
    top = flat.topk(5, dim=1).indices
    for temperature in (1.0, 4.0, 8.0):
        exact = torch.softmax(flat / temperature, dim=1)
        rebuilt = torch.softmax(readings.at(temperature)[:, 0] / temperature, dim=1)
        assert torch.allclose(rebuilt.gather(1, top), exact.gather(1, top), atol=1e-6)
        leftover = 1 - exact.gather(1, top).sum(1)
        assert torch.allclose(1 - rebuilt.gather(1, top).sum(1), leftover, atol=1e-6)
        assert torch.allclose(rebuilt.sum(1), torch.ones(64), atol=1e-6)
    # what the old storage (every other class at the mean leftover logit) gave at T = 1
    mask = torch.ones_like(flat, dtype=torch.bool).scatter_(1, top, False)
    mean_rest = (flat * mask).sum(1) / 95
    old_leftover = 95 * mean_rest.exp() / (95 * mean_rest.exp() + flat.gather(1, top).exp().sum(1))
    exact_leftover = 1 - torch.softmax(flat, dim=1).gather(1, top).sum(1)
    assert (old_leftover < 0.5 * exact_leftover).all()  # badly understated before
    # z-scored readings: exact for the z-scored logits (Sun et al.'s preprocessing)
    z = standardize(flat)
    exact = torch.softmax(z / 4.0, dim=1)
    rebuilt = torch.softmax(readings.at(4.0, standardized=True)[:, 0] / 4.0, dim=1)
    assert torch.allclose(rebuilt.gather(1, top), exact.gather(1, top), atol=1e-5)
    # a temperature it was not built for is refused, not approximated
    with pytest.raises(CacheError, match="not at"):
        readings.at(2.0)


def test_values_beyond_the_storage_dtype_or_not_finite_are_refused() -> None:
    spec = topk_spec(2, dtype="float16")
    big = torch.zeros(2, 1, 10)
    big[0, 0, 3] = 70000.0  # beyond float16's largest finite value
    with pytest.raises(CacheError, match=r"set cache\.dtype=float32"):
        encode(big, spec, 10)
    full16 = CacheSpec.create("a" * 64, "data", VIEWS, 7, CacheConfig(views=1))
    with pytest.raises(CacheError, match=r"set cache\.dtype=float32"):
        encode(big, full16, 10)
    nan = torch.zeros(2, 1, 10)
    nan[1, 0, 0] = float("nan")
    with pytest.raises(CacheError, match="not finite"):
        encode(nan, full16, 10)
    assert np.isfinite(encode(big, topk_spec(2, dtype="float32"), 10)["values"]).all()


def test_topk_cache_round_trip_through_the_training_reader(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    full = build_logit_cache(teacher, spec_for(mnist_dataset), mnist_dataset, tmp_path, 1000, CPU)
    spec = CacheSpec.create(
        "a" * 64,
        mnist_dataset.info.fingerprint,
        VIEWS,
        7,
        CacheConfig(views=3, storage="topk", top_k=3),
        readings=[(4.0, False)],
    )
    topk = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 1000, CPU)
    # float16 values, uint8 indices, one float32 leftover log-sum-exp per reading
    assert topk.bytes_per_sample_view == 3 * 2 + 3 * 1 + 4
    full_cache, topk_cache = open_logit_cache(Path(full.path)), open_logit_cache(Path(topk.path))
    assert topk_cache.arrays["indices"].dtype == np.uint8
    rows, views = np.arange(0, 4000, 37), np.arange(0, 4000, 37) % 3
    exact = torch.softmax(full_cache.logits(rows, views) / 4, dim=1)
    teacher_reading = topk_cache.batch_logits(rows, views)
    assert not isinstance(teacher_reading, torch.Tensor)
    rebuilt = torch.softmax(teacher_reading.at(4.0) / 4, dim=1)
    top = exact.topk(3, dim=1).indices
    assert torch.allclose(rebuilt.gather(1, top), exact.gather(1, top), atol=2e-3)  # float16
    assert torch.allclose(rebuilt.sum(1), torch.ones(len(rows)), atol=1e-5)
    with pytest.raises(CacheError, match="per temperature"):
        topk_cache.logits(rows, views)
    assert index_dtype(10) == np.uint8 and index_dtype(1000) == np.uint16


def test_topk_needs_fewer_than_all_classes(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    with pytest.raises(CacheError, match="top_k"):
        build_logit_cache(
            teacher,
            spec_for(mnist_dataset, storage="topk", top_k=10),
            mnist_dataset,
            tmp_path,
            1000,
            CPU,
        )


BUILDER = """
import sys, torch
from pathlib import Path
from components.checkpoint import load_checkpoint
from components.config import AugmentConfig, CacheConfig
from components.data import load_dataset
from components.logit_cache import CacheSpec, build_logit_cache
dataset = load_dataset(sys.argv[1])
model, _ = load_checkpoint(Path(sys.argv[2]))
views = AugmentConfig(enabled=True)
spec = CacheSpec.create("c" * 64, dataset.info.fingerprint, views, 7, CacheConfig(views=2))
info = build_logit_cache(model, spec, dataset, Path(sys.argv[3]), 250, torch.device("cpu"))
print("hit" if info.cache_hit else "built")
"""


def builder_command(
    tmp_path: Path, teacher: torch.nn.Module, dataset: Dataset, root: Path
) -> list[str]:
    """A separate process that builds the cache of BUILDER's spec under ``root``."""
    checkpoint = tmp_path / "teacher.pt"
    save_checkpoint(
        checkpoint,
        teacher,
        arch="cnn_tiny",
        in_channels=1,
        num_classes=10,
        config={},
        metrics={},
        dataset_fingerprint="x",
    )
    return [sys.executable, "-c", BUILDER, dataset.info.path, str(checkpoint), str(root)]


def test_two_concurrent_builders_leave_one_valid_cache(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    root = tmp_path / "cache"
    args = builder_command(tmp_path, teacher, mnist_dataset, root)
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outputs == ["built", "hit"]
    caches = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(caches) == 1
    open_logit_cache(caches[0])  # verifies every chunk
    assert not list(root.glob(".*.partial"))


def test_mixup_views_are_cached_as_rendered(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    policy = AugmentConfig(enabled=True, mixup_alpha=1.0)
    spec = CacheSpec.create(
        "m" * 64, mnist_dataset.info.fingerprint, policy, 3, CacheConfig(views=2)
    )
    info = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 1000, CPU)
    cache = open_logit_cache(Path(info.path))
    rows, views = np.array([5, 2500]), np.array([1, 0])
    train = mnist_dataset.splits["train"]

    def fetch(r: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(mnist_dataset.images[train[r]])

    rendered = render_views(fetch, rows, mnist_dataset.train_ids(), views, policy, 3)
    with torch.no_grad():
        expected = teacher(normalize(rendered.images, mnist_dataset.info))
    assert torch.allclose(cache.logits(rows, views), expected, atol=1e-2, rtol=1e-3)


def test_two_worker_processes_build_the_same_cache_as_one(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    spec = spec_for(mnist_dataset)
    one = build_logit_cache(teacher, spec, mnist_dataset, tmp_path / "one", 500, CPU)

    # half built in-process, then interrupted; two launched workers finish the rest
    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_logit_cache(
            teacher, spec, mnist_dataset, tmp_path / "two", 500, CPU, stop_after_three
        )
    two = build_logit_cache(teacher, spec, mnist_dataset, tmp_path / "two", 500, CPU, workers=2)
    # float16, bit for bit: each chunk is the same computation wherever it runs
    assert files(Path(two.path)) == files(Path(one.path))
    manifest = json.loads((Path(two.path) / "manifest.json").read_text())
    n = len(mnist_dataset.splits["train"])
    assert [c[:2] for c in manifest["chunks"]] == [[s, min(s + 500, n)] for s in range(0, n, 500)]
    assert open_logit_cache(Path(two.path), expected_key=spec.key).rows == n


def test_sigkilled_build_resumes_from_the_last_complete_chunk(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    root = tmp_path / "cache"
    args = builder_command(tmp_path, teacher, mnist_dataset, root)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    spec = CacheSpec.create(
        "c" * 64,
        mnist_dataset.info.fingerprint,
        AugmentConfig(enabled=True),
        7,
        CacheConfig(views=2),
    )
    journal = root / f".{spec.key}.partial" / "chunks.jsonl"
    while process.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (root / spec.key).exists()  # nothing under the final name
    kept = len(journal.read_text().splitlines())

    calls: list[int] = []
    resumed = build_logit_cache(
        teacher, spec, mnist_dataset, root, 250, CPU, lambda done, total: calls.append(done)
    )
    chunks = -(-len(mnist_dataset.splits["train"]) // 250)
    assert calls == list(range(kept + 1, chunks + 1))  # chunks of 250 rows; only the missing
    whole = build_logit_cache(teacher, spec, mnist_dataset, tmp_path / "whole", 250, CPU)
    assert files(Path(resumed.path)) == files(Path(whole.path))


def test_a_two_view_cache_holds_the_teacher_on_each_views_strong_view(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    two_view = AugmentConfig(enabled=True, strong=StrongAugment())
    config = CacheConfig(views=2, dtype="float32")
    spec = CacheSpec.create("a" * 64, mnist_dataset.info.fingerprint, two_view, 7, config)
    info = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 1000, CPU)
    cache = open_logit_cache(Path(info.path), expected_key=spec.key)
    assert set(cache.arrays) == {"logits", "strong_logits"}
    assert info.bytes_per_sample_view == 2 * 10 * 4
    # regenerate both views of some rows independently and run the teacher on them
    rows, views = np.array([3, 2500, 3999]), np.array([1, 0, 1])
    train = mnist_dataset.splits["train"]

    def fetch(r: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(mnist_dataset.images[train[r]])

    ids = mnist_dataset.train_ids()
    strong = render_strong_views(fetch, rows, ids, views, two_view, 7)
    weak = render_views(fetch, rows, ids, views, two_view, 7).images
    with torch.no_grad():
        on_strong = teacher(normalize(strong, mnist_dataset.info))
        on_weak = teacher(normalize(weak, mnist_dataset.info))
    assert torch.allclose(cache.logits(rows, views, strong=True), on_strong, atol=1e-5)
    assert torch.allclose(cache.logits(rows, views), on_weak, atol=1e-5)
    assert not torch.equal(strong, weak)  # they are other inputs (an untrained teacher's
    assert not torch.allclose(on_strong, on_weak, atol=1e-4)  # logits barely move with them)
    # a one-view cache has no strong views to give
    plain = build_logit_cache(teacher, spec_for(mnist_dataset), mnist_dataset, tmp_path, 1000, CPU)
    with pytest.raises(CacheError, match="no strong views"):
        open_logit_cache(Path(plain.path)).batch_logits(rows, views, strong=True)


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime"])
def test_any_chunk_and_forward_batch_give_the_same_bytes(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module, runtime: str
) -> None:
    spec = replace(spec_for(mnist_dataset), runtime=runtime)
    one_pass = build_logit_cache(
        teacher, spec, mnist_dataset, tmp_path / "a", 1000, CPU, batch_size=1000
    )
    small = build_logit_cache(teacher, spec, mnist_dataset, tmp_path / "b", 700, CPU, batch_size=64)
    assert files(Path(one_pass.path)) == files(Path(small.path))


def test_onnx_runtime_builds_the_cache_from_the_teachers_twin(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    # given the same teacher run by PyTorch and by ONNX Runtime (exported for the build)
    torch_spec = spec_for(mnist_dataset)
    ort_spec = replace(torch_spec, runtime="onnxruntime")
    assert ort_spec.key != torch_spec.key  # the runtime is part of what made the bytes
    by_torch = build_logit_cache(teacher, torch_spec, mnist_dataset, tmp_path, 1000, CPU)
    by_ort = build_logit_cache(teacher, ort_spec, mnist_dataset, tmp_path, 1000, CPU)
    # then the logits agree to float16 rounding, the parity is recorded and the twin is gone
    a, b = (open_logit_cache(Path(i.path)).arrays["logits"] for i in (by_torch, by_ort))
    assert np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-2, rtol=1e-3)
    manifest = json.loads((Path(by_ort.path) / "manifest.json").read_text())
    assert 0 <= manifest["runtime_max_abs_diff_vs_pytorch"] < 1e-3
    assert manifest["spec"]["runtime"] == "onnxruntime"
    assert not list(tmp_path.rglob("*.onnx"))


def test_the_runtime_is_resolved_from_the_setting_the_device_and_the_teacher() -> None:
    gpu = torch.device("cuda")
    assert resolve_runtime("auto", CPU) == "onnxruntime"
    assert resolve_runtime("auto", gpu) == "pytorch"
    assert resolve_runtime("pytorch", CPU) == "pytorch"
    assert resolve_runtime("pytorch", CPU, "onnx") == "onnxruntime"  # an ONNX file runs in ORT
    assert resolve_runtime("onnxruntime", CPU, "exported") == "pytorch"


def _version(pool: Dataset, keep: np.ndarray, name: str) -> Dataset:
    """The pool's images ``keep`` as a dataset of their own, split by content."""
    ids = pool.ids[keep] if pool.ids is not None else None
    assert ids is not None  # the default data source is split by content
    splits = split_images(pool.labels[keep], ids, SplitConfig())
    info = replace(
        pool.info,
        fingerprint=name,
        split_sizes={k: len(v) for k, v in splits.items()},
    )
    images, labels = np.asarray(pool.images[keep]), pool.labels[keep]
    return Dataset(info=info, images=images, labels=labels, splits=splits, ids=ids)


@pytest.mark.parametrize(
    ("storage", "runtime"), [("full", "pytorch"), ("topk", "pytorch"), ("full", "onnxruntime")]
)
def test_a_grown_dataset_runs_the_teacher_only_on_new_samples_and_gets_the_bytes_of_a_fresh_build(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module, storage: str, runtime: str
) -> None:
    # given a first data version, then 10% more images (shuffled in among the others) and 50
    # of the first version's removed
    n = len(mnist_dataset.images)
    rng = np.random.default_rng(0)
    first_keep = np.sort(rng.permutation(n)[: n * 10 // 11])
    grown_keep = rng.permutation(np.setdiff1d(np.arange(n), first_keep[:50]))
    first = _version(mnist_dataset, first_keep, "first")
    grown = _version(mnist_dataset, grown_keep, "grown")
    # and a teacher fed one input recipe in both (a kept teacher keeps the one it learned on)
    view = TeacherView(teacher, InputSpec.of_data(mnist_dataset.info), None)
    recipe = view.spec.as_dict()
    cache = {"storage": storage, **({"top_k": 3} if storage == "topk" else {})}

    def spec(data: Dataset) -> CacheSpec:
        return replace(spec_for(data, **cache), teacher_input=recipe, runtime=runtime)

    build_logit_cache(view, spec(first), first, tmp_path / "store", 700, CPU)
    # when the grown version's cache is built in the same store, and from scratch elsewhere
    again = build_logit_cache(view, spec(grown), grown, tmp_path / "store", 700, CPU)
    fresh = build_logit_cache(view, spec(grown), grown, tmp_path / "fresh", 700, CPU)
    # then the teacher ran only on the training samples the first version did not hold
    new = np.setdiff1d(grown.train_ids(), first.train_ids())
    assert again.computed_rows == len(new) < 0.15 * again.rows
    assert fresh.computed_rows == fresh.rows
    # and what a training epoch reads is, byte for byte, a fresh build's
    assert files(Path(again.path)) == files(Path(fresh.path))
    assert open_logit_cache(Path(again.path), expected_key=spec(grown).key).rows == again.rows
    # a forced rebuild trusts no earlier bytes: it computes every row
    forced = build_logit_cache(view, spec(grown), grown, tmp_path / "store", 700, CPU, rebuild=True)
    assert forced.computed_rows == forced.rows


def test_nothing_is_reused_for_another_input_recipe_or_for_mixed_views(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    n = len(mnist_dataset.images)
    first = _version(mnist_dataset, np.arange(n - 300), "first")
    grown = _version(mnist_dataset, np.arange(n), "grown")
    build_logit_cache(teacher, spec_for(first), first, tmp_path, 1000, CPU)
    # the same input recipe (the statistics unchanged): reused
    same = build_logit_cache(teacher, spec_for(grown), grown, tmp_path, 1000, CPU)
    moved = replace(grown, info=replace(grown.info, fingerprint="moved", mean=[0.2], std=[0.3]))
    # the data's own statistics moved with the data: another input, nothing reused
    other = build_logit_cache(teacher, spec_for(moved), moved, tmp_path, 1000, CPU)
    # mixed views: a partner is drawn from the whole (grown) training set, nothing reused
    mixing = AugmentConfig(enabled=True, crop_padding=2, mixup_alpha=0.4)
    build_logit_cache(
        teacher, replace(spec_for(first), augment=mixing.model_dump()), first, tmp_path, 1000, CPU
    )
    mixed = build_logit_cache(
        teacher, replace(spec_for(grown), augment=mixing.model_dump()), grown, tmp_path, 1000, CPU
    )
    assert same.computed_rows < 0.1 * same.rows
    assert other.computed_rows == other.rows and mixed.computed_rows == mixed.rows

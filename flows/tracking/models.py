"""Models brought in from a store: a registry URI or a run's model resolved to what it is now,
and its files downloaded (the MLflow teacher source's ``ModelStore``,
components/teacher_sources/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.tracking.common import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow is imported in the methods, not here: the teacher stage's pre-flight check imports
# this module (for the lazy loader below) before MLflow is loaded.


class ModelLoader:
    """Models of one MLflow store, as a teacher source reads them."""

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self.client, self.tracking_uri = client, tracking_uri

    def resolve_model(self, uri: str) -> tuple[str, str]:
        """(where its files are, what it is): a ``models:/name@alias`` or ``models:/name/3``
        URI resolved to its version now, or a ``runs:/<id>/<path>`` URI as it is."""
        from mlflow.exceptions import MlflowException

        try:
            if uri.startswith("runs:/"):
                run_id = uri.removeprefix("runs:/").partition("/")[0]
                self.client.get_run(run_id)
                return uri, uri
            name, sep, version = uri.removeprefix("models:/").rpartition("/")
            if sep and version.isdigit():
                found = self.client.get_model_version(name, version)
            else:
                name, _, alias = uri.removeprefix("models:/").partition("@")
                if not alias:
                    raise TrackingError(f"{uri}: give a version or an alias (models:/name/3)")
                found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            raise TrackingError(f"{uri}: MLflow cannot resolve it ({err.message})") from None
        source = self.client.get_model_version_download_uri(found.name, str(found.version))
        return source, f"models:/{found.name}/{found.version} (run {found.run_id})"

    def fetch_model(self, uri: str, destination: Path) -> tuple[str, Any]:
        """The model's files, downloaded: ("onnx", the .onnx file) or ("pytorch", the module
        MLflow's PyTorch flavour loads). Raises ``TrackingError`` for anything else."""
        import mlflow
        import yaml
        from mlflow.exceptions import MlflowException

        from flows.tracking.fluent import quiet_downloads

        source, _ = self.resolve_model(uri)
        try:
            with quiet_downloads():
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=source,
                        dst_path=str(destination),
                        tracking_uri=self.tracking_uri,
                    )
                )
        except MlflowException as err:
            raise TrackingError(f"{uri}: cannot download it ({err.message})") from None
        spec = local / "MLmodel"
        if not spec.is_file():
            raise TrackingError(f"{uri}: not an MLflow model (no MLmodel file)")
        flavors = yaml.safe_load(spec.read_text()).get("flavors", {})
        if "onnx" in flavors:
            return "onnx", local / flavors["onnx"]["data"]
        if "pytorch" in flavors:
            from mlflow import pytorch as mlflow_pytorch

            # MLflow's PyTorch flavour is a pickle: loaded only from the configured registry.
            return "pytorch", mlflow_pytorch.load_model(str(local), map_location="cpu")
        raise TrackingError(f"{uri}: flavours {sorted(flavors)}; a teacher must be onnx or pytorch")


class LazyModelLoader:
    """A ``ModelLoader`` made on first use: the pre-flight check and the fingerprint ask a
    teacher source for its identity, and only the MLflow source asks the store anything, so
    no store is opened (a SQLite file created) for the others."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._loader: ModelLoader | None = None

    def _open(self) -> ModelLoader:
        if self._loader is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
            self._loader = ModelLoader(client, self.tracking_uri)
        return self._loader

    def resolve_model(self, uri: str) -> tuple[str, str]:
        return self._open().resolve_model(uri)

    def fetch_model(self, uri: str, destination: Path) -> tuple[str, Any]:
        return self._open().fetch_model(uri, destination)

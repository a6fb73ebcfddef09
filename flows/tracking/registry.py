"""The model registry: versions, their tags and descriptions, aliases, and the files and
training examples of a version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.tracking.fluent import fluent_tracking_uri, quiet_downloads


class Registry:
    """The registered models of one MLflow store (the registry lives beside the runs)."""

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self.client, self.tracking_uri = client, tracking_uri

    def register(
        self,
        name: str,
        run_id: str,
        model: tuple[str, str],
        alias: str,
        tags: dict[str, Any],
        description: str,
        model_description: str,
    ) -> str:
        """A new version of registered model ``name`` from a logged model (id, URI), with
        ``description`` (the model card) on the version; the alias moved to it. A new
        registered model gets ``model_description``, an existing one keeps its own."""
        try:
            registered = self.client.get_registered_model(name)
            if not registered.description:
                self.client.update_registered_model(name, description=model_description)
        except MlflowException:
            self.client.create_registered_model(name, description=model_description)
        model_id, model_uri = model
        with fluent_tracking_uri(self.tracking_uri):  # the store resolves models:/<id> so
            version = self.client.create_model_version(
                name,
                model_uri,
                run_id=run_id,
                tags={k: str(v) for k, v in tags.items()},
                description=description,
                model_id=model_id,
            )
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def version_tagged(self, name: str, key: str, value: str) -> str | None:
        """The oldest version of registered model ``name`` whose tag ``key`` is ``value``."""
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return None
        found = sorted(int(v.version) for v in versions if v.tags.get(key) == value)
        return str(found[0]) if found else None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version of registered model ``name`` holding ``alias``; None when there is none."""
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def download_version(self, name: str, version: str, destination: Path) -> Path:
        """The registered version's files, fetched through the registry (local or remote)."""
        source = self.client.get_model_version_download_uri(name, version)
        with quiet_downloads():
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(destination), tracking_uri=self.tracking_uri
                )
            )

    def training_examples(self, name: str, version: str, destination: Path) -> list[str] | None:
        """The image hashes a registered version records it was trained on (its handoff run's
        ``training_examples.json``); None when it records none."""
        try:
            run_id = self.client.get_model_version(name, version).run_id
            if run_id is None:
                return None
            path = self.client.download_artifacts(
                run_id, "training_examples.json", str(destination)
            )
        except (MlflowException, OSError):
            return None
        return list(json.loads(Path(path).read_text())["examples"])

"""Prefect flows and tasks of kd-pipeline: wiring, MLflow logging, saving."""

"""Plain Python/PyTorch building blocks of kd-pipeline; no Prefect or MLflow here."""

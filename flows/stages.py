"""The names of the stages Prefect caches on their input fingerprints, in pipeline order.

Kept apart from ``flows.tasks`` so that the CLI can offer them (``--force-stage``) without
importing Prefect.
"""

CACHED_STAGES = (
    "teacher",
    "logit-cache",
    "student-baseline",
    "student-kd",
    "onnx-export",
    "benchmark",
)

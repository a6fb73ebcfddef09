"""README quotes what committed scripts wrote: its default-run block is
benchmarks/results/default_run.md, word for word, and every result file it links exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_default_run_in_readme_is_the_committed_benchmark_output() -> None:
    readme = (REPO / "README.md").read_text()
    written = (REPO / "benchmarks" / "results" / "default_run.md").read_text()
    assert written.strip() in readme, "README's default run differs from default_run.md"


def test_every_result_readme_links_is_committed() -> None:
    readme = (REPO / "README.md").read_text()
    linked = re.findall(r"\]\((benchmarks/results/[^)#]+)\)", readme)
    assert linked
    missing = [path for path in linked if not (REPO / path).is_file()]
    assert not missing, missing

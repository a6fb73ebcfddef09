"""``kd``: the command-line entry point.

kd run [--config FILE] [--set dotted.key=value ...] [--force | --force-stage S ...]
                                                      run the pipeline
kd serve [--cron EXPR] [--watch SECONDS] [--config FILE] [--set ...]
                                                      serve it as scheduled Prefect deployments
kd sweep [--config FILE] [--set sweep.grid=...]     distil several settings in parallel
kd compare [--experiment NAME] [--last N | RUN_ID ...] [--dataset D | --all-datasets]
           [--out DIR]
                                                      compare model variants across runs
kd config [--config FILE] [--set ...]                 print the resolved, validated config
kd schema                                             print the config's JSON schema
kd stages                                             list the pipeline's stages
kd predict BUNDLE [IMAGE...] [--top-k K] [--self-check]
                                                      classify images with a handoff bundle
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from components.config import (
    ConfigError,
    PipelineConfig,
    config_to_yaml,
    load_config,
    union_kinds,
)
from components.io import (
    WorkDirBusy,
    WorkDirError,
    check_writable,
    ensure_writable,
    work_dir_lock,
    write_json,
)
from flows.control_choice import control_record, with_recorded_control

DEPLOYMENT_NAME = "kd-scheduled"

EXIT_USAGE = 2  # bad config or input: the user's to fix
EXIT_FAILED = 1  # the run itself failed
EXIT_REFUSED = 3  # the run finished, and its model was refused (a registry floor, no promotion)


def config_help() -> str:
    """The epilog of the commands that take a config; sections and kinds from the schema."""
    kinds = union_kinds()
    sections = ", ".join(
        f"{name} ({' | '.join(kinds[name])})" if name in kinds else name
        for name in PipelineConfig.model_fields
    )
    return f"""\
configuration:
  The config is one validated tree (see `kd schema`); unknown keys are errors.
  With no --config the built-in defaults are used (the same as configs/default.yaml).
  --set overrides any field by its dotted path; the value is read as YAML:
    kd run --set teacher.train.epochs=3 --set distill.temperature=2.0
    kd run --set data.kind=torchvision --set data.name=CIFAR10 --set data.root=./data
  Sections: {sections}.

environment:
  MLFLOW_TRACKING_URI  MLflow store or server (default: sqlite:///mlflow.db here)
  PREFECT_API_URL      Prefect server (default: a temporary local server)
"""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set key=value``: shared by kd and the benchmarks."""
    parser.add_argument("--config", type=Path, help="YAML config file (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field by dotted path, e.g. --set distill.temperature=2 (repeatable)",
    )


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark script's parser: its docstring as help, ``--out DIR``, ``--config`` and
    ``--set`` (the scripts that run the pipeline as a user would)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="where the results go")
    add_config_arguments(parser)
    return parser


def run_kd(
    arguments: list[str], cwd: Path, tracking_uri: str, log: Path, in_process: bool = False
) -> tuple[int, float]:
    """``kd <arguments>`` as a user runs it, in ``cwd`` against ``tracking_uri``, its output
    to ``log``: its exit code and seconds. A process of its own (start-up, imports and the
    Prefect server in the time), or ``in_process`` (none of those: a quick check, as tests run
    it). For the benchmark scripts that run the pipeline as a user would."""
    started = time.perf_counter()
    with open(log, "w") as out:
        if not in_process:
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
            command = [sys.executable, "-m", "flows.cli", *arguments]
            code = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=out).returncode
            return code, time.perf_counter() - started
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        try:
            with (
                contextlib.chdir(cwd),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
            ):
                code = main(arguments)
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    return code, time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd", description="Knowledge-distillation pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="train teacher, cache logits, distil and export a student",
        description=(
            "Train the teacher, cache its logits, train the baseline and distilled students, "
            "export the distilled student to ONNX, verify and benchmark it; every stage is "
            "a Prefect task and an MLflow child run."
        ),
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(run)
    run.add_argument(
        "--check",
        action="store_true",
        help="run the pre-flight checks only (config, paths, data, teacher, architectures, "
        "servers and credentials), write nothing, and exit",
    )
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="processes per stage (torch.distributed; same as --set distributed.nproc=N)",
    )
    serve = commands.add_parser(
        "serve",
        help="serve the pipeline as Prefect deployments: on a cron, and/or when data arrives",
        description=(
            "Register the deployment kd-retrain/NAME with a cron schedule (--cron) and/or "
            "kd-retrain-on-data/NAME (--watch SECONDS: checks the data source's files every "
            "SECONDS and retrains only when they changed; an unchanged check takes seconds), "
            "and serve them from this process until Ctrl-C (Prefect's serve). Each run reads "
            "the config file afresh and reuses every stage whose inputs did not change. Without "
            "PREFECT_API_URL the runs are served by a local Prefect server that lives as "
            "long as this process."
        ),
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--cron", help='cron expression, e.g. "0 3 * * *" (03:00 every day)')
    serve.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="also (or instead) check the data source every SECONDS and retrain only when its "
        "files changed (deployment kd-retrain-on-data/NAME)",
    )
    serve.add_argument("--timezone", default="UTC", help="time zone of the cron (default UTC)")
    serve.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")
    add_pipeline_arguments(serve)
    sweep = commands.add_parser(
        "sweep",
        help="distil one student per setting of sweep.grid, in parallel",
        description=(
            "One teacher, one logit cache and one baseline; then a distilled student for every "
            "combination of sweep.grid, trained at once through the Prefect task runner in "
            "sweep.task_runner (thread, process or dask), each its own MLflow child run. "
            "Example: kd sweep --set 'sweep.grid={distill.temperature: [2, 4], "
            "distill.alpha: [0.5, 0.9]}'"
        ),
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(sweep)
    compare = commands.add_parser(
        "compare",
        help="compare the model variants of pipeline runs (from MLflow)",
        description=(
            "Teacher, baseline and distilled students and the ONNX float32/INT8 variants of "
            "the chosen pipeline runs: accuracy, size, latency, throughput, speed-up and "
            "accuracy kept vs the teacher. Read from MLflow (MLFLOW_TRACKING_URI), written "
            "as markdown, CSV and a PNG scatter of accuracy against latency."
        ),
    )
    compare.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="pipeline (parent) runs")
    compare.add_argument("--experiment", default=PipelineConfig().experiment_name)
    compare.add_argument("--last", type=int, help="the last N runs (default 3)")
    compare.add_argument(
        "--dataset", help="runs of this dataset (default: the newest run's; `dataset` tag)"
    )
    compare.add_argument(
        "--all-datasets", action="store_true", help="runs of every dataset, each labelled"
    )
    default_out = PipelineConfig().work_dir / "compare"
    compare.add_argument(
        "--out", type=Path, default=default_out, help=f"output directory ({default_out})"
    )
    choose = commands.add_parser(
        "choose-control",
        help="choose the label-only control's recipe for this data and student, once",
        description=(
            "Train every control candidate (cached or fresh views, label smoothing 0 or 0.1; "
            "the student's architecture and budget) on UNITS held-out folds of the training "
            "and validation pool (never the test split), choose the best mean held-out "
            "accuracy, and record the choice under the work dir. Later `kd run`s on the same "
            "data, split, student and cached views train that recipe as their control "
            "(unless the config sets student.baseline itself); the summary says so."
        ),
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(choose)
    choose.add_argument(
        "--units", type=int, default=3, help="held-out folds, each its own seed (default 3)"
    )
    show = commands.add_parser("config", help="print the resolved, validated config as YAML")
    add_config_arguments(show)
    commands.add_parser("schema", help="print the config's JSON schema")
    commands.add_parser(
        "stages", help="list the pipeline's stages: what each reads, needs and whether cached"
    )
    predict = commands.add_parser(
        "predict",
        help="classify image files with a handoff bundle (ONNX Runtime only)",
        description="Classify PNG/JPEG files with a handoff bundle, using ONNX Runtime alone.",
    )
    predict.add_argument("bundle", type=Path, help="handoff bundle directory")
    predict.add_argument("images", type=Path, nargs="*", help="image files")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument(
        "--self-check",
        action="store_true",
        help="run the bundle's own test images and compare with the logits it records "
        "(exit 1 when this deployment does not reproduce them)",
    )
    return parser


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """What every command that runs the pipeline takes: config, forced stages, --debug."""
    add_config_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--force",
        action="store_const",
        const="all",
        dest="force_all",
        help="recompute every stage even when its inputs are unchanged",
    )
    parser.add_argument(
        "--force-stage",
        action="append",
        default=[],
        metavar="STAGE",
        help="recompute this cached stage regardless of the cache (repeatable; `kd stages` "
        "lists them)",
    )


def _force(args: argparse.Namespace) -> list[str]:
    return [args.force_all] if args.force_all else list(args.force_stage)


def disk_full(err: BaseException) -> bool:
    """Whether a failure anywhere in the chain was a write refused for lack of space."""
    import errno

    texts = ("no space left", "file too large", "disk is full", "file write failed")
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return True
        if any(text in str(seen).lower() for text in texts):
            return True
        # numpy's short write (ndarray.tofile) carries no errno: "N requested and M written"
        if isinstance(seen, OSError) and re.search(r"\d+ requested and \d+ written", str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_servers(timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when a configured server does not answer or refuses
    the credentials the environment gives (the clients read the same variables)."""
    import base64
    import urllib.error
    import urllib.request

    mlflow_user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    mlflow_password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    prefect_auth = os.environ.get("PREFECT_API_AUTH_STRING")
    servers = [
        (
            "MLflow tracking server",
            "MLFLOW_TRACKING_URI",
            "/api/2.0/mlflow/experiments/search?max_results=1",
            f"{mlflow_user}:{mlflow_password}" if mlflow_user else None,
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        ),
        (
            "Prefect server",
            "PREFECT_API_URL",
            "/admin/version",
            prefect_auth,
            "PREFECT_API_AUTH_STRING (user:password)",
        ),
    ]
    for what, variable, probe, credentials, names in servers:
        url = os.environ.get(variable, "")
        if not url.startswith(("http://", "https://")):
            continue  # a local store or Prefect's own temporary server
        base = url.rstrip("/")
        try:
            with urllib.request.urlopen(base + "/health", timeout=timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # it answered: reachable
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnreachable(
                f"{what} {url} ({variable}) does not answer: {reason}. Start it, or unset "
                f"{variable} to use the local default."
            ) from None
        request = urllib.request.Request(base + probe)
        if credentials is not None:
            token = base64.b64encode(credentials.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                given = f"the credentials in {names}" if credentials else "a request without"
                fix = "check them" if credentials else f"set {names}"
                raise ServerUnreachable(
                    f"{what} {url} ({variable}) refused {given}"
                    f"{'' if credentials else ' credentials'} (HTTP {err.code}): {fix}."
                ) from None
            # another answer (an older server without this route): its clients will tell
        except (urllib.error.URLError, OSError):
            pass  # answered /health a moment ago: the run's own calls will report it


class ServerUnreachable(RuntimeError):
    pass


def _predict(bundle_dir: Path, images: list[Path], top_k: int, check: bool) -> int:
    # No torch here: the bundle is all a deployment has.
    from components.predict import Bundle, self_check

    if not images and not check:
        print("kd: predict: give image files, or --self-check", file=sys.stderr)
        return EXIT_USAGE
    try:
        bundle = Bundle(bundle_dir)
        checked = self_check(bundle_dir) if check else None
    except (ValueError, OSError, KeyError) as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    if bundle.refused is not None:
        print(f"kd: warning: this model was {bundle.refused}; do not deploy it", file=sys.stderr)
    if checked is not None:
        print(f"{bundle_dir}: {checked.describe()}")
        for failure in checked.failures:
            print(f"  {failure}")
        if not checked.passed:
            return EXIT_FAILED
    if not images:
        return 0
    failed = False
    for result in bundle.classify(images, top_k):
        if result.error is not None:
            failed = True
            print(f"kd: {result.error}", file=sys.stderr)
            continue
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top)
        print(f"{result.path}: {ranked}")
    return EXIT_USAGE if failed else 0


def _choose_control(config: PipelineConfig, units: int, invocation: str) -> int:
    from components.control import choose_control
    from components.data import load_dataset, prepare_dataset
    from components.data_sources import DataError
    from components.devices import resolve_device
    from components.recipes import CONTROL_CANDIDATES
    from flows.stage import PreflightError
    from flows.stages import PIPELINE

    # The checks a run makes of what this reads (the data, the student), before any work.
    try:
        for stage in PIPELINE:
            if stage.name in ("prepare-data", "student-baseline"):
                stage.preflight(config)
        check_writable(config.work_dir)
    except (PreflightError, WorkDirError) as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # One job at a time on a work dir: a run training meanwhile would share its folder.
        with work_dir_lock(ensure_writable(config.work_dir), invocation):
            info = prepare_dataset(config.data, config.split, config.work_dir / "prepare-data")
            dataset = load_dataset(info.path)
            total = units * len(CONTROL_CANDIDATES)
            print(
                f"kd: training {len(CONTROL_CANDIDATES)} control candidates on {units} held-out "
                f"folds ({total} runs of {config.student.train.epochs} epochs)",
                flush=True,
            )
            record = choose_control(
                config,
                dataset,
                units,
                resolve_device(config.device),
                on_result=lambda unit, name, accuracy: print(
                    f"  unit {unit}: {name} held-out accuracy {accuracy:.4f}", flush=True
                ),
            )
    except (DataError, WorkDirError, WorkDirBusy, ValueError) as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kd: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the training itself failed (say, cuda asked of a CPU machine)
        print(f"kd: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    record["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path = write_json(control_record(config), record)
    print()
    print("| control | held-out accuracy (mean) | vs the chosen, points [95% CI] | chosen again |")
    print("|---|---:|---:|---:|")
    for name, candidate in record["candidates"].items():
        difference = candidate["vs_chosen"]
        lo, hi = difference["interval"]
        print(
            f"| {name} | {candidate['mean']:.4f} | {difference['estimate'] * 100:+.2f} "
            f"[{lo * 100:+.2f}, {hi * 100:+.2f}] | {record['reselection_rate'][name]:.2f} |"
        )
    print()
    print(f"Chosen: {record['chosen']} (best mean over {units} units); recorded in {path}")
    print("Later `kd run`s on this data and student train it as their control.")
    return 0


def _invocation(argv: Sequence[str] | None) -> str:
    """How this process was started, for the work dir's lock ('kd run --set seed=1')."""
    return " ".join(["kd", *(sys.argv[1:] if argv is None else argv)])[:200]


def _quiet_prefect_server() -> None:
    # The local server has no internet to report to; its telemetry job only contends for the
    # SQLite database ('database is locked' on a first start).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _run(config: PipelineConfig, force: list[str]) -> int:
    # Imported here: Prefect and MLflow take seconds to import, which `kd schema` need not pay.
    from flows.pipeline import distillation_pipeline

    started = time.perf_counter()
    result = distillation_pipeline(config, force)
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    print()
    print(result.summary_markdown)
    print(f"Wall time: {int(minutes)} min {seconds:.1f} s")
    for line in result.lines:
        print(line)
    reused = ", ".join(f"{stage} (from run {run})" for stage, run in result.reused.items())
    print(f"Reused stages: {reused or 'none (all computed)'}")
    print(f"MLflow parent run: {result.parent_run_id} ({result.tracking_uri})")
    print(f"Open the MLflow UI: {result.ui_command}")
    if result.refused is not None:
        print(f"Refused: {result.refused}")
        return EXIT_REFUSED
    return 0


def _stages() -> int:
    from flows.pipeline import PIPELINE

    for stage in PIPELINE:
        cached = "cached" if stage.cached else "every run"
        print(f"{stage.name} ({cached})")
        print(f"  reads:  {', '.join(stage.reads) or '-'}")
        if stage.settings:
            print(f"  settings (not fingerprinted): {', '.join(stage.settings)}")
        print(f"  needs:  {', '.join(stage.needs) or '-'}")
    return 0


def _serve(args: argparse.Namespace, work_dir: Path) -> int:
    from flows.schedule import cron_schedule, serve_pipeline
    from flows.servers import configured_prefect_api, work_dir_prefect

    if args.cron is None and args.watch is None:
        print("kd: serve needs --cron EXPR, --watch SECONDS or both", file=sys.stderr)
        return EXIT_USAGE
    if args.watch is not None and args.watch < 1:
        print(f"kd: --watch {args.watch:g}: at least 1 second between checks", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.cron is not None:
            cron_schedule(args.cron, args.timezone)
    except ValueError as err:
        print(f"kd: --cron {args.cron!r} --timezone {args.timezone!r}: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not configured_prefect_api():
        print(f"kd: no PREFECT_API_URL: starting a local Prefect server ({work_dir / 'prefect'})")
    # Scheduled runs start in processes of their own: they find the URL in the environment.
    with work_dir_prefect(work_dir) as url:
        print(f"kd: Prefect server {url} (UI: {url.removesuffix('/api')}); Ctrl-C stops both")
        if args.cron is not None:
            print(f"kd: serving kd-retrain/{args.name} on cron {args.cron!r} ({args.timezone})")
        if args.watch is not None:
            print(
                f"kd: serving kd-retrain-on-data/{args.name}: the data checked every "
                f"{args.watch:g} s, a retrain only when it changed"
            )
        serve_pipeline(
            args.name,
            args.cron,
            args.timezone,
            args.watch,
            args.config,
            args.overrides,
            _force(args),
        )
    return 0


def _sweep(config: PipelineConfig, force: list[str]) -> int:
    from components.config import sweep_points
    from components.methods import check_views

    if not config.sweep.grid:
        example = "--set 'sweep.grid={distill.temperature: [2, 4]}'"
        print(f"kd: sweep.grid is empty: give the settings to try, e.g. {example}", file=sys.stderr)
        return EXIT_USAGE
    try:
        for label, point in sweep_points(config):  # every point validated before any work
            try:
                check_views(point)
            except ValueError as err:
                raise ConfigError(f"sweep point {label}: {err}") from None
    except ConfigError as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    from flows.sweep import sweep_pipeline, task_runner

    result = sweep_pipeline.with_options(task_runner=task_runner(config.sweep))(config, force)
    print()
    print(result.table_markdown)
    print(f"MLflow parent run: {result.parent_run_id} ({result.tracking_uri})")
    print(f"Compare: kd compare {result.parent_run_id}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from flows.compare import compare_runs, write_comparison
    from flows.pipeline import PIPELINE
    from flows.tracking import TrackingError, resolve_tracking_uri

    if args.run_ids and args.last:
        print("kd: give either RUN_ID... or --last N, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.last is not None and args.last < 1:
        print("kd: --last must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        rows = compare_runs(
            resolve_tracking_uri(),
            args.experiment,
            PIPELINE,
            args.last or 3,
            args.run_ids,
            dataset=args.dataset,
            all_datasets=args.all_datasets,
        )
    except TrackingError as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    files = write_comparison(rows, args.out)
    print(files["markdown"].read_text(), end="")
    print()
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_prefect_server()  # before anything imports Prefect
    if args.command == "predict":
        return _predict(args.bundle, args.images, args.top_k, args.self_check)
    if args.command == "schema":
        print(json.dumps(PipelineConfig.model_json_schema(), indent=2))
        return 0
    if args.command == "compare":
        return _compare(args)
    if args.command == "stages":
        return _stages()
    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "nproc", None) is not None:
        overrides.append(f"distributed.nproc={args.nproc}")
    try:
        config = with_recorded_control(load_config(args.config, overrides), args.config, overrides)
    except ConfigError as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "choose-control":
        return _choose_control(config, args.units, _invocation(argv))
    if args.command == "config":
        print(config_to_yaml(config), end="")
        return 0
    # Imported here, not at the top: `kd predict` must run without torch. Neither Prefect nor
    # MLflow is imported before the pre-flight checks pass (they cost seconds).
    from components.data_sources import DataError
    from components.teachers import TeacherError
    from flows.stage import PreflightError, StageError, resolve_force
    from flows.stages import PIPELINE

    # Bad input is the user's to fix: one line, exit 2, before any run is opened or any file
    # written. Each stage checks what it will read (data source, teacher, architectures).
    try:
        resolve_force(_force(args), PIPELINE)
        check_servers()
        for stage in PIPELINE:
            stage.preflight(config)
        check_writable(config.work_dir)
    except (WorkDirError, ServerUnreachable, StageError, PreflightError) as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "check", False):
        print(f"kd: every pre-flight check passed ({len(PIPELINE)} stages); nothing was written")
        return 0
    from flows.servers import work_dir_prefect

    try:
        ensure_writable(config.work_dir)  # the work begins: its directory, made now
        if args.command == "serve":
            return _serve(args, config.work_dir)
        # One pipeline at a time per work dir: a second refuses here, before any run opens.
        with work_dir_lock(config.work_dir, _invocation(argv)), work_dir_prefect(config.work_dir):
            if args.command == "sweep":
                return _sweep(config, _force(args))
            return _run(config, _force(args))
    except WorkDirBusy as err:
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kd: interrupted", file=sys.stderr)
        return 130
    except (DataError, TeacherError) as err:  # found only once the data is read
        if args.debug:
            raise
        print(f"kd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if args.debug:
            raise
        if disk_full(err):
            print(
                f"kd: the disk is full (or a file size limit was reached) while writing: {err}. "
                "Free some space and rerun: finished stages are kept and reused, and nothing "
                "half-written was left under a final name.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"kd: {type(err).__name__}: {err}", file=sys.stderr)
        print("kd: rerun with --debug for the full traceback", file=sys.stderr)
        return EXIT_FAILED


def command() -> NoReturn:
    """The ``kd`` command: ``main``, then the exit.

    Once kd's work is done, Python's teardown of the modules it imported (torch, MLflow,
    Prefect, ONNX Runtime) takes another 1-1.5 s. kd has closed and flushed its files by then,
    so it runs what was registered to run at exit (logging's flush, Prefect's and MLflow's
    drains, temporary directories) and exits at once, unless a thread of its own is still at
    work: then the usual exit waits for it.
    """
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader gone (kd ... | head) is no error here
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    command()

"""`affectflow` command line: demo data, runs, single-stage reruns, inspection.

Every failure prints one line and a hint; `--debug` (before or after the command) shows the
traceback. Commands that only read (`runs`, `inspect`, `export`, `check`, `config`) and every
config error finish without starting Prefect or importing torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from affectflow.core.console import Verbosity, setup_console
from affectflow.core.display import printable
from affectflow.core.errors import UserError
from affectflow.core.locks import set_command
from affectflow.core.progress import stop_display
from affectflow.pipelines.prefect_env import configure_prefect_env


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from affectflow.demo.generate import generate_demo

    counts = generate_demo(Path(args.dir), posts=args.posts, seed=args.seed,
                           per_class=args.per_class, lighting=args.lighting)
    print(f"demo data written to {args.dir}: {counts}")
    return 0


def _cmd_demo_models(args: argparse.Namespace) -> int:
    from affectflow.demo.models import build_demo_models

    built = build_demo_models(Path(args.dir), epochs=args.epochs, seed=args.seed)
    print(f"demo models ready: {built}")
    return 0


def _print_stage_lines(ref: Any, stages: dict[str, dict[str, Any]]) -> None:
    """The run-end summary: per stage its status, accounting, time and key result."""
    from affectflow.pipelines.inspect import stage_headline

    for name, summary in stages.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["rejects_by_reason"].items())
        print(f"  {name:<12} {summary['status']:<8} {summary['rows_in']} in = {summary['rows_out']} out + "
              f"{summary['rows_rejected']} rejected{f' ({reasons})' if reasons else ''}"
              f"  [{summary['timings']['seconds']:.1f}s]")
        # result lines the stage's summary offers, then the view's key result for the stage
        lines = [*summary.get("headline", []), stage_headline(ref.store, name)]
        for line in filter(None, lines):
            print(f"  {'':<12} {line}")


def _cmd_check(args: argparse.Namespace) -> int:
    from affectflow.pipelines.config import load_config
    from affectflow.pipelines.preflight import require_ready

    config = load_config(Path(args.config), args.set)
    report = require_ready(config, args.config)
    print(f"{args.config}: valid; stages {', '.join(config.run.stages)}")
    for line in report.found:
        print(f"  ok  {line}")
    print("everything this run needs is here" + (f" (offline: {report.offline})" if report.offline else ""))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from affectflow.pipelines.config import load_config
    from affectflow.pipelines.execution import check_config_change, run_ref, skip_if_up_to_date
    from affectflow.pipelines.preflight import require_ready
    from affectflow.stages.registry import get_stage

    # Config errors, a changed config of an existing run, missing weights and wrong dataset
    # layouts fail before Prefect starts and before the run folder exists.
    overrides = [*args.set, *([f"run.artifact_root={args.artifact_root}"] if args.artifact_root else [])]
    config = load_config(Path(args.config), overrides)
    for name in args.force or []:
        get_stage(name)
    ref = run_ref(config, args.run_id)
    check_config_change(ref, config, args.update)
    rerun = ref.store.exists()
    if not rerun:  # a new run: missing models or data fail before its folder exists
        require_ready(config, args.config)
    with ref.store.writer():  # a second writer fails now, not after Prefect has started
        # A rerun with nothing to do is answered from the artifact store; Prefect (and its
        # temporary server) starts only for real work. It loads no model, so it needs no
        # preflight (which asks the model libraries' registries and so imports torch).
        result = None if args.force else skip_if_up_to_date(ref, config, args.update)
        if result is None:
            if rerun:
                require_ready(config, args.config)
            from affectflow.pipelines.flows import cternet_flow, pretrain_flow

            flow = {"pretrain": pretrain_flow, "cternet": cternet_flow}[args.flow]
            result = flow(config_path=args.config, overrides=overrides, run_id=ref.run_id,
                          force=args.force or [], update=args.update)
    print(f"run {result['run_id']} finished: {result['run_dir']}")
    _print_stage_lines(ref, result["stages"])
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from affectflow.pipelines.execution import RunRef, run_config
    from affectflow.pipelines.preflight import require_ready
    from affectflow.stages.registry import get_stage

    get_stage(args.name)
    ref = RunRef(args.artifact_root, args.run)
    with ref.store.base_folder():  # the saved config's relative paths mean the run's folder
        require_ready(run_config(ref, args.set), f"run {args.run}", [args.name])
    with ref.store.writer():
        from affectflow.pipelines.flows import rerun_stage_flow

        result = rerun_stage_flow(run_id=args.run, stage=args.name, artifact_root=args.artifact_root,
                                  overrides=args.set, force=args.force)
    _print_stage_lines(ref, {args.name: result["stage"]})
    stale = result["stale"]
    print("downstream stages now stale: " + (", ".join(stale) if stale else "none"))
    if stale:
        print(f"  compute them again with: affectflow resume {args.run}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from affectflow.core.runs import RunStore
    from affectflow.pipelines.execution import RunRef, run_config
    from affectflow.pipelines.inspect import state_line
    from affectflow.pipelines.preflight import require_ready
    from affectflow.pipelines.state import TO_RESUME, stage_states

    store = RunStore(Path(args.artifact_root), args.run_id)
    with store.base_folder():
        pending = [state for state in stage_states(store) if state.state in TO_RESUME]
        if pending:  # missing weights or datasets fail now, before Prefect starts
            require_ready(run_config(RunRef(args.artifact_root, args.run_id)), f"run {args.run_id}",
                          [state.stage for state in pending])
    if not pending:
        print(f"run {args.run_id} is up to date: nothing to resume")
        return 0
    print(f"resuming run {args.run_id}:")
    for state in pending:
        print(state_line(state))
    with store.writer():
        from affectflow.pipelines.flows import resume_flow

        result = resume_flow(run_id=args.run_id, artifact_root=args.artifact_root)
    print(f"run {args.run_id} resumed: {result['run_dir']}")
    _print_stage_lines(RunRef(args.artifact_root, args.run_id), result["stages"])
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from affectflow.core.runs import RunStore
    from affectflow.pipelines.inspect import run_report, runs_table

    if args.run_id:
        store = RunStore(Path(args.artifact_root), args.run_id)
        with store.base_folder():
            print(run_report(store))
    else:
        print(runs_table(Path(args.artifact_root)))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from affectflow.core.runs import RunStore

    store = RunStore(Path(args.artifact_root), args.run_id)
    if args.html and args.stage != "partition":
        raise UserError("--html is only available for the partition stage",
                        hint=f"affectflow inspect {args.run_id} partition --html FILE")
    html = Path(args.html).resolve() if args.html else None  # the caller's folder, not the run's
    with store.base_folder():
        return _inspect(args, store, html)


def _inspect(args: argparse.Namespace, store: Any, html: Path | None) -> int:
    from affectflow.pipelines.inspect import markdown_report, run_report, stage_report

    if not args.stage:
        print(run_report(store))
        return 0
    if args.maps:
        from affectflow.stages.cternet.maps import write_sentiment_maps

        if not args.out:
            raise UserError("--maps needs --out: the folder the pictures and their index go to",
                            hint=f"affectflow inspect {args.run_id} cternet_eval --maps {args.maps} "
                                 f"--out maps-{args.run_id}")
        print(f"sentiment maps: {write_sentiment_maps(store, args.maps, Path(args.out))}")
        return 0
    if args.stage == "partition":
        from affectflow.stages.partition.view import partition_report

        print(partition_report(store, args.samples))
        if html is not None:
            from affectflow.stages.partition.gallery import write_gallery

            path = write_gallery(store, html, per_partition=args.per_partition)
            print(f"gallery written to {path}")
        return 0
    from affectflow.stages.knowledge.view import KNOWLEDGE_STAGES, knowledge_report

    if args.stage in KNOWLEDGE_STAGES:
        print(knowledge_report(store, args.stage, args.samples))
        return 0
    print(stage_report(store.stage(args.stage), args.samples))
    report = markdown_report(store.stage(args.stage))
    if report:
        print(report)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from affectflow.core.runs import RunStore
    from affectflow.stages.partition.export import export_partition

    store = RunStore(Path(args.artifact_root), args.run_id)
    out = Path(args.out).resolve()  # the caller's folder, not the run's
    with store.base_folder():
        rows = export_partition(store, out, args.partition)
    print(f"{rows} rows of run {args.run_id} written to {args.out}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from affectflow.core.pixel_cache import prune
    from affectflow.pipelines.inspect import cache_table
    from affectflow.stages.batching import pixel_cache_root

    root = pixel_cache_root(args.artifact_root)
    if args.action == "ls":
        print(cache_table(root))
        return 0
    if args.max_gb is None and not args.all:
        raise UserError("cache prune needs a size to shrink to",
                        hint="affectflow cache prune --max-gb 20 (least recently used first), "
                             "or --all")
    if args.max_gb is not None and args.max_gb < 0:
        raise UserError(f"--max-gb {args.max_gb} is negative", hint="give a size in GB, e.g. 20")
    deleted, left = prune(root, 0 if args.all else int(args.max_gb * 1e9))
    print(f"pruned {deleted} shard(s) from {root}; {left / 1e9:.2f} GB left")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    """`config show SECTION` prints a section's keys; `config reference [--write]` the README's
    generated key reference (written into configs/README.md with --write)."""
    from affectflow.pipelines.config import REFERENCE_FILE, readme_with_reference, reference_markdown, section_text

    if args.action == "show":
        if not args.section:
            raise UserError("config show needs a section", hint="affectflow config show ingest")
        print(section_text(args.section))
    elif args.write:
        REFERENCE_FILE.write_text(readme_with_reference(REFERENCE_FILE.read_text(encoding="utf-8")),
                                  encoding="utf-8")
        print(f"key reference written to {REFERENCE_FILE}")
    else:
        print(reference_markdown(), end="")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Runs `python -m bench` from the checkout (benchmarks are not part of the installed package)."""
    import subprocess

    import affectflow

    checkout = Path(affectflow.__file__).resolve().parents[1]
    if not (checkout / "bench" / "__main__.py").is_file():
        raise UserError("benchmarks live in the source checkout's bench/ folder, not found here",
                        hint="run from a clone of the repository (pip install -e .)")
    if args.gpu:
        command = [sys.executable, "-m", "bench.gpu", *(["--tiny"] if args.tiny else []),
                   *(["--only", *args.only] if args.only else [])]
    elif args.tiny:
        raise UserError("--tiny belongs to the GPU benchmark", hint="affectflow bench --gpu --tiny")
    else:
        command = [sys.executable, "-m", "bench", *(["--quick"] if args.quick else []),
                   *(["--only", *args.only] if args.only else [])]
    return subprocess.run(command, cwd=checkout).returncode


def _console_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--debug / --quiet, on the main parser (default False) and on every command (SUPPRESS, so
    an option given before the command is not reset by the command's parser)."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="debug logs, and the traceback of an error")
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="errors and the final summary only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectflow", description=__doc__.splitlines()[0])
    _console_options(parser, False)
    common = argparse.ArgumentParser(add_help=False)
    _console_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_subparser(common))

    demo = commands.add_parser("demo-data", help="write the seeded demo datasets")
    demo.add_argument("dir", help="output folder")
    demo.add_argument("--posts", type=int, default=1500, help="number of posts (default 1500)")
    demo.add_argument("--per-class", type=int, default=150,
                      help="images per class in the FI-style folder (default 150)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-lighting", dest="lighting", action="store_false",
                      help="no random colour cast / exposure on post and FI images")
    demo.set_defaults(func=_cmd_demo_data)

    models = commands.add_parser("demo-models", help="train/build the demo's small models")
    models.add_argument("dir", help="demo data folder (models go to DIR/models)")
    models.add_argument("--epochs", type=int, default=8, help="CLIP training epochs (default 8)")
    models.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    models.set_defaults(func=_cmd_demo_models)

    run = commands.add_parser("run", help="run a pipeline flow from a config")
    run.add_argument("flow", choices=["pretrain", "cternet"],
                     help="pretrain (posts -> PACL) or cternet (labelled images -> CTERNet)")
    run.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    run.add_argument("--run-id", help="reuse or name a run (default: a new id)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set ingest.shard_size=64")
    run.add_argument("--force", action="append", metavar="STAGE",
                     help="recompute this stage even if its fingerprint is unchanged")
    run.add_argument("--update", action="store_true",
                     help="an existing run: replace its saved config with this one (the changes "
                          "are recorded in its history); without it a changed config is refused")
    run.add_argument("--artifact-root", help="folder holding runs/ (default: the config's "
                                             "run.artifact_root)")
    run.set_defaults(func=_cmd_run)

    check = commands.add_parser("check", help="validate a config and look for every model and dataset "
                                              "it needs, starting nothing")
    check.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set ingest.path=/data/TumEmo")
    check.set_defaults(func=_cmd_check)

    resume = commands.add_parser("resume", help="compute again the stages of a run that are "
                                                "not done (stale, failed, interrupted, not run)")
    resume.add_argument("run_id")
    resume.set_defaults(func=_cmd_resume)

    stage = commands.add_parser("stage", help="rerun one stage of an existing run")
    stage.add_argument("name", help="stage name, e.g. ingest")
    stage.add_argument("--run", required=True, help="run id")
    stage.add_argument("--force", action="store_true", help="recompute even if unchanged")
    stage.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key of the run")
    stage.set_defaults(func=_cmd_stage)

    runs = commands.add_parser("runs", help="list runs (one line each), or one run's stages "
                                            "with their state")
    runs.add_argument("run_id", nargs="?", help="show this run's stages in DAG order")
    runs.set_defaults(func=_cmd_runs)

    inspect = commands.add_parser("inspect", help="show a run or one stage's artifact")
    inspect.add_argument("run_id")
    inspect.add_argument("stage", nargs="?", help="stage name (omit for the run overview)")
    inspect.add_argument("--samples", type=int, default=5, help="sample rows to show")
    inspect.add_argument("--html", metavar="FILE",
                         help="partition only: also write a self-contained HTML gallery")
    inspect.add_argument("--per-partition", type=int, default=60,
                         help="gallery cards per partition (default 60)")
    inspect.add_argument("--maps", type=int, default=0, metavar="N",
                         help="cternet: write sentiment-map overlays of N test images, across classes")
    inspect.add_argument("--out", metavar="DIR", help="--maps: folder for the pictures and index.html")
    inspect.set_defaults(func=_cmd_inspect)

    export = commands.add_parser("export", help="write a stage's rows for external tools")
    export.add_argument("run_id")
    export.add_argument("stage", choices=["partition"], help="stage to export")
    export.add_argument("--partition", help="only this partition (strong, partial_emotional, "
                                            "partial_factual, weak); default: all")
    export.add_argument("--out", required=True, help="output file: *.parquet or *.csv")
    export.set_defaults(func=_cmd_export)

    cache = commands.add_parser("cache", help="list or prune the decode-once pixel cache")
    cache.add_argument("action", choices=["ls", "prune"],
                       help="ls: transforms, images, size, last use; prune: delete least "
                            "recently used shards")
    cache.add_argument("--max-gb", type=float, help="prune: shrink the cache to this size")
    cache.add_argument("--all", action="store_true", help="prune: delete every entry")
    cache.set_defaults(func=_cmd_cache)

    config = commands.add_parser("config", help="the config keys of a section (types, defaults, meaning)")
    config.add_argument("action", choices=["show", "reference"],
                        help="show SECTION: one section's keys; reference: every section as markdown")
    config.add_argument("section", nargs="?", help="run or a stage name, e.g. ingest")
    config.add_argument("--write", action="store_true",
                        help="reference: write it into configs/README.md")
    config.set_defaults(func=_cmd_config)

    bench = commands.add_parser("bench", help="run the benchmarks in bench/ and print one table")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench.add_argument("--only", nargs="*", help="benchmark module names (with --gpu: sections)")
    bench.add_argument("--gpu", action="store_true",
                       help="the GPU benchmark (python -m bench.gpu; needs CUDA unless --tiny)")
    bench.add_argument("--tiny", action="store_true", help="with --gpu: tiny models on the CPU")
    bench.set_defaults(func=_cmd_bench)

    for sub in (stage, resume, runs, inspect, export, cache):
        sub.add_argument("--artifact-root", default="artifacts",
                         help="folder holding runs/ (default: artifacts)")
    return parser


def _subparser(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """Command parsers that all accept the console options after the command too."""

    class CommandParser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**kwargs, "parents": [*kwargs.get("parents", []), common]})

    return CommandParser


def _verbosity(args: argparse.Namespace) -> Verbosity:
    if args.debug:
        return Verbosity.DEBUG
    return Verbosity.QUIET if args.quiet else Verbosity.NORMAL


def main(argv: list[str] | None = None) -> int:
    configure_prefect_env()  # before anything imports Prefect, which reads its settings early
    set_command(["affectflow", *(sys.argv[1:] if argv is None else argv)])
    args = build_parser().parse_args(argv)
    setup_console(_verbosity(args))
    try:
        return int(args.func(args))
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(f"error: {type(error).__name__}: {printable(first_line, 300)}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback", file=sys.stderr)
        return 1
    finally:
        stop_display()


if __name__ == "__main__":
    sys.exit(main())

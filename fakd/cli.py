"""The command line: parse arguments, call one function, turn user mistakes into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from fakd.errors import UserError
from fakd.faults import EXIT_MACHINE_FAULT, MachineFault, machine_fault, with_resume_hint
from fakd.supervisor import DRIVING
from fakd.vocab import ARMS, BUDGETS, DEFAULT_ARM, METRIC, arm_names

EXIT_USER_ERROR = 2


def _log(message: str) -> None:
    print(message, flush=True)


class ClosedOutput(Exception):
    """The reader of a command's printed result went away (`| head`)."""


def _emit(text: str) -> None:
    """Print a command's result; when the reader closed the pipe, stop quietly, as other command-line tools do (the
    rest of the output goes nowhere, so the interpreter's last flush cannot fail either)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ClosedOutput from None


def command_train(args: argparse.Namespace) -> int:
    from fakd.preflight import preflight
    from fakd.results.layout import check_outside_studies
    from fakd.spec import load_spec

    spec = load_spec(args.spec, args.set)
    accepted = arm_names(spec.defaults.methods)
    if args.arm is not None and args.arm not in accepted:
        raise UserError(f"unknown arm {args.arm!r}; accepted: {', '.join(accepted)}", key="--arm")
    preflight(spec)
    from fakd.train import run_distillation  # after validation: torch and timm load slowly

    cfg = spec.run_config(args.arm or _default_arm(spec.settings.arms), split="val")
    out = Path(args.out or Path("runs") / f"{spec.name}-train-{cfg.arm.replace('+', '_')}").resolve()
    check_outside_studies(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    _log(f"run directory: {out}")
    try:
        result = run_distillation(cfg, out, log=_log)
    except UserError as exc:
        raise exc.located(spec.path) from None
    if result["reused"]:
        _log(f"{out} already holds this finished run: its results are shown, nothing was trained")
    teacher, student = result["teacher"], result["student"]
    _log(f"teacher {cfg.teacher.label}: val mIoU {teacher.get(METRIC, float('nan')):.4f}")
    _log(f"student {cfg.student.backbone} ({cfg.arm}): val mIoU {student[METRIC]:.4f}")
    return 0


def _log_table(study: Path | str) -> None:
    """After a driver finished: the ablation table to W&B (when the study tracks and has retrain runs)."""
    from fakd.export.wandb_table import log_ablation_table

    log_ablation_table(study)


def command_sweep(args: argparse.Namespace) -> int:
    from fakd.spec import load_spec

    teacher = [f"teacher.checkpoint={args.teacher}"] if args.teacher else []
    load_spec(args.spec, [*args.set, *teacher])  # a bad spec is one line before Ray, torch and timm are imported
    from fakd.study import sweep

    study = sweep(args.spec, args.set, storage=args.storage, name=args.name, address=args.address,
                  teacher_checkpoint=args.teacher, no_wandb=args.no_wandb)
    _log_table(study.root)
    return 0


def command_resume(args: argparse.Namespace) -> int:
    from fakd.results import open_study_dir

    open_study_dir(args.study_dir)  # not a study: one line before Ray, torch and timm are imported
    from fakd.study import resume

    _log_table(resume(args.study_dir, address=args.address, no_wandb=args.no_wandb).root)
    return 0


def command_status(args: argparse.Namespace) -> int:
    import json

    from fakd.results.status import format_status, status, status_json

    found = status(args.study_dir)
    if args.json:
        _emit(json.dumps(status_json(found.records, found.driver)))
        return 0
    _emit(format_status(found.records, found.driver, found.plan))
    return 0


def command_retrain(args: argparse.Namespace) -> int:
    from fakd.study.requests import retrain_request

    # refusals before Ray, torch and timm are imported
    retrain_request(args.study_dir, args.seeds, until_decided=args.until_decided, max_seeds=args.max_seeds,
                    budget=args.budget)
    from fakd.study import retrain

    study = retrain(args.study_dir, args.seeds, until_decided=args.until_decided, max_seeds=args.max_seeds,
                    budget=args.budget, address=args.address, no_wandb=args.no_wandb)
    _log_table(study.root)
    _log(f"the table: python launch.py export {study.root}")
    return 0


def command_extend(args: argparse.Namespace) -> int:
    from fakd.study.requests import extend_request

    extend_request(args.study_dir, args.arms, args.set)  # refusals before Ray, torch and timm are imported
    from fakd.study import extend

    study = extend(args.study_dir, args.arms, args.set, address=args.address, no_wandb=args.no_wandb)
    _log_table(study.root)
    _log(f"the table with every comparison: python launch.py export {study.root}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from fakd.results import open_study_dir

    studies = [args.study_dir, *args.more_studies]
    for study in studies:
        open_study_dir(study)  # not a study: one line before pandas and scipy are imported
    if len(studies) > 1 or args.labels is not None or args.spread is not None:
        return _export_across(studies, args)
    from fakd.export import export_study

    result = export_study(args.study_dir, args.format, args.out)
    if args.out is None:
        _emit(result.text)
    else:
        _log(f"wrote {args.out}" + (" (self-contained: plots embedded)" if args.format == "html" else ""))
        for plot in result.plots:
            _log(f"wrote {plot}")
    print(result.note, file=sys.stderr)
    return 0


def command_plan(args: argparse.Namespace) -> int:
    import json

    from fakd.plan import (
        MEASURED_ITERS,
        TEACHER,
        make_bill,
        measure_costs,
        parse_step_seconds,
        render_bill,
    )
    from fakd.spec import load_spec

    spec = load_spec(args.spec, args.set)
    slots = args.slots if args.slots is not None else spec.settings.search.max_concurrent
    if slots < 1:
        raise UserError(f"--slots {slots}: at least one trial runs at a time", key="--slots")
    given = parse_step_seconds(args.step_seconds or "", list(spec.settings.arms))
    unmeasured = [name for name in (TEACHER, *spec.settings.arms) if name not in given]
    if unmeasured:
        print(f"measuring {', '.join(unmeasured)}: {2 * MEASURED_ITERS} training iterations each, here",
              file=sys.stderr)
    costs = {**measure_costs(spec, unmeasured), **given} if unmeasured else given
    bill = make_bill(spec, costs, slots)
    units = spec.settings.resources.units_per_trial
    _emit(json.dumps(bill.to_json(units), indent=2) if args.json else render_bill(bill, units, given))
    return 0


def command_slurm(args: argparse.Namespace) -> int:
    from fakd.slurm import Job, check_job, parse_time, submit, write_job
    from fakd.spec import NAME_PATTERN, load_spec

    spec = load_spec(args.spec, args.set)  # every spec check and override before anything is written or submitted
    name = args.name or spec.name
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"{name!r} is not a study name: letters, digits, _ . + -, not starting with .", key="--name")
    resources = spec.settings.resources
    job = Job(Path(args.spec).resolve(), Path(args.storage).expanduser().resolve(), name, list(args.set),
              args.nodes, args.gpus_per_node, args.cpus_per_task, args.mem, parse_time(args.time), args.grace,
              args.partition, args.account)
    check_job(job, allow_local=args.allow_local, submit=args.submit, spec_gpus=resources.gpu * resources.workers)
    script = write_job(job)
    _log(f"wrote {script}")
    if args.submit:
        job_id = submit(script)
        _log(f"submitted job {job_id}; follow it with: squeue -j {job_id}; python launch.py status {script.parents[1]}")
        print(job_id)
    else:
        _log(f"submit it with: sbatch {script}")
    return 0


def _export_across(studies: list[str], args: argparse.Namespace) -> int:
    from fakd.export.across import export_across

    labels = [label.strip() for label in args.labels.split(",")] if args.labels is not None else None
    text, table = export_across(studies, args.format, args.out, labels=labels, spread=args.spread or "ci")
    if args.out is None:
        _emit(text)
    else:
        _log(f"wrote {args.out} ({len(table.columns)} columns, {len(table.arms)} rows)")
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """Sweep the quickstart (or finish it when it was interrupted), then print its ablation table."""
    from fakd.spec import load_spec

    spec = load_spec(args.spec)  # a bad spec is one line before Ray, torch and timm are imported
    from fakd.export import export_study
    from fakd.results import StudyDir
    from fakd.study import resume, sweep

    study_dir = Path(args.storage).expanduser().resolve() / spec.name
    if (study_dir / "study.json").is_file():
        resume(study_dir)
    else:
        sweep(args.spec, storage=args.storage)
    _log_table(study_dir)
    exports = StudyDir(study_dir).exports
    result = export_study(study_dir, "md", exports / "ablation.md", plots=False)
    export_study(study_dir, "csv", exports / "ablation.csv", plots=False)
    report = export_study(study_dir, "html", exports / "report.html")  # draws the plots beside it and embeds them
    _log(f"\nAblation table of {study_dir} (validation split; mean and 95% CI over retrained runs):\n")
    _log(result.compact)
    _log(f"\n{report.note}")
    _log(f"tables: {exports / 'ablation.md'}, {exports / 'ablation.csv'} (every column, unrounded)")
    _log(f"report: {exports / 'report.html'} (one file, opens offline)")
    for plot in report.plots:
        _log(f"plot: {plot}")
    return 0


def _default_arm(arms: Sequence[str]) -> str:
    return DEFAULT_ARM if DEFAULT_ARM in arms else arms[-1]


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line naming the command, the argument and what is accepted (exit 2), not a usage
    block; `--help` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _ray_and_wandb_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that drives a study on Ray."""
    parser.add_argument("--address", help="Ray cluster: auto or ray://host:port (default: start Ray locally)")
    parser.add_argument("--no-wandb", action="store_true", help="do not stream to Weights & Biases")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="launch.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="one teacher→student run with the spec's default values")
    train.add_argument("spec", help="study spec (YAML)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value (dotted key, YAML-typed value); repeatable")
    train.add_argument("--out", help="run directory (default: runs/NAME-train-ARM)")
    train.add_argument("--arm", help=f"ablation arm: {', '.join(ARMS)} or a plug-in method's (default: kd+fakd when "
                       "the spec lists it)")
    train.set_defaults(func=command_train)

    sweep = commands.add_parser("sweep", help="search every arm of a study on Ray Tune")
    sweep.add_argument("spec", help="study spec (YAML)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec value")
    sweep.add_argument("--storage", default="runs", help="parent directory of the study (default: runs)")
    sweep.add_argument("--name", help="study name (default: the spec's name)")
    sweep.add_argument("--teacher", metavar="CHECKPOINT", help="use this teacher checkpoint instead of training")
    _ray_and_wandb_options(sweep)
    sweep.set_defaults(func=command_sweep)

    resume = commands.add_parser("resume", help="finish an interrupted study")
    resume.add_argument("study_dir")
    _ray_and_wandb_options(resume)
    resume.set_defaults(func=command_resume)

    status = commands.add_parser("status", help="list a study's trials")
    status.add_argument("study_dir")
    status.add_argument("--json", action="store_true", help="one JSON list of trial objects")
    status.set_defaults(func=command_status)
    retrain = commands.add_parser("retrain", help="retrain each arm's best configuration with fresh seeds")
    retrain.add_argument("study_dir")
    retrain.add_argument("--seeds", type=int,
                         help="number of fresh seeds (more than the study has: only the missing ones train); raising "
                              "it after looking at the table voids the fixed-n p-values (the table then shows the "
                              "sequential verdicts)")
    retrain.add_argument("--until-decided", action="store_true",
                         help="add rounds of search.decide.round seeds to the arms of undecided comparisons until "
                              "each is better, worse or equivalent (anytime-valid), or reaches the maximum")
    retrain.add_argument("--max-seeds", type=int, metavar="N",
                         help="with --until-decided: stop undecided comparisons at N seeds (default: "
                              "search.decide.max_seeds, else 20)")
    retrain.add_argument("--budget", choices=BUDGETS,
                         help="train.iters for every arm, or the wall-clock the baseline's iterations cost "
                              "(default: search.retrain_budget)")
    _ray_and_wandb_options(retrain)
    retrain.set_defaults(func=command_retrain)

    extend = commands.add_parser("extend", help="add arms to a finished study: the same teacher, search protocol, "
                                 "budget and seeds; its own trials untouched")
    extend.add_argument("study_dir")
    extend.add_argument("--arms", required=True, help="comma-separated arms to add (a base arm the study lacks too)")
    extend.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting only the new arms use (their loss term, a search distribution of it), or "
                             "search.add_on where no arm of the study is an add-on arm")
    _ray_and_wandb_options(extend)
    extend.set_defaults(func=command_extend)

    export = commands.add_parser("export", help="write a study's ablation table, or one table across several "
                                 "studies (reads, never changes, a study)")
    export.add_argument("study_dir")
    export.add_argument("more_studies", nargs="*", metavar="STUDY_DIR",
                        help="more studies: one table with a column per study (arms as rows, the teacher first)")
    export.add_argument("--labels", help="the columns' labels, comma-separated, one per study (and student and "
                        "budget); default: dataset · student")
    export.add_argument("--spread", choices=["ci", "sd"], default=None,
                        help="a table across studies: ± the 95%% interval's half-width (ci, default) or the seed SD")
    export.add_argument("--format", default="md", choices=["md", "csv", "latex", "html"],
                        help="md (default): prints the compact table (mIoU and Δ vs base in %%, Holm p, compute "
                        "hours, ≤ 120 columns); with --out writes it, the decisions and the full table. csv: the "
                        "full table, every column unrounded, printed or written. latex: prints the compact "
                        "tabular; with --out writes the full table. html: the self-contained report (plots "
                        "embedded), printed or written")
    export.add_argument("--out", help="output file; the plots are written beside it (default: print)")
    export.set_defaults(func=command_export)

    plan = commands.add_parser("plan", help="the bill before the launch: device-hours per arm and in total, and the "
                               "wall clock on K slots (measured here, or from --step-seconds)")
    plan.add_argument("spec", help="study spec (YAML)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec value")
    plan.add_argument("--slots", type=int, help="trials at once (default: the spec's search.max_concurrent)")
    plan.add_argument("--step-seconds", metavar="ARM=S,...",
                      help="seconds per training iteration by arm (and teacher=S), e.g. measured on the target GPU; "
                      "the arms not named are measured here")
    plan.add_argument("--json", action="store_true", help="print the bill as JSON (hours per arm and a total)")
    plan.set_defaults(func=command_plan)

    slurm = commands.add_parser("slurm", help="write (and with --submit, submit) a Slurm batch script that runs "
                                "a study to its end: a sweep, then a resume after each requeue")
    slurm.add_argument("spec", help="study spec (YAML)")
    slurm.add_argument("--storage", required=True, help="parent directory of the study, on storage every node sees")
    slurm.add_argument("--name", help="study name (default: the spec's name)")
    slurm.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec value")
    slurm.add_argument("--nodes", type=int, required=True, help="nodes of the job (a Ray head plus workers)")
    slurm.add_argument("--gpus-per-node", type=int, default=0)
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per node (one task per node)")
    slurm.add_argument("--mem", help="memory per node, as Slurm takes it (e.g. 64G)")
    slurm.add_argument("--time", required=True, help="the job's time limit: HH:MM:SS or D-HH:MM:SS")
    slurm.add_argument("--grace", type=int, default=300, metavar="SECONDS",
                       help="stop the study this long before the time limit, then requeue (default: 300)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--allow-local", action="store_true",
                       help="accept a node-local --storage (a temporary directory) for a single-node job")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch and print the job id")
    slurm.set_defaults(func=command_slurm)

    demo = commands.add_parser("demo", help="run (or finish) a study and print its ablation table")
    demo.add_argument("spec", nargs="?", default="studies/quickstart.yaml")
    demo.add_argument("--storage", default="runs")
    demo.set_defaults(func=command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # bad arguments (one line, see OneLineParser) or --help
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        print(f"error: {exc.format()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MachineFault as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MACHINE_FAULT
    except ClosedOutput:
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        study = getattr(args, "study_dir", None) or _study_of(args)
        hint = f"; resume with: python launch.py resume {study}" if study else ""
        print(f"stopped by {signal.Signals(signum).name}{hint}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # a full or read-only disk under the driver's own writes: one line, not a traceback
        study = getattr(args, "study_dir", None) or _study_of(args)
        fault = machine_fault(exc, study) if study else None
        if fault is None:
            raise
        driving = args.command in DRIVING
        print(f"error: {with_resume_hint(fault, study) if driving else fault}", file=sys.stderr)
        return EXIT_MACHINE_FAULT


def _study_of(args: argparse.Namespace) -> str | None:
    """The study directory a sweep or demo writes (for the resume hint), when it already exists."""
    if args.command not in ("sweep", "demo"):
        return None
    try:
        from fakd.spec import load_spec

        name = getattr(args, "name", None) or load_spec(args.spec, getattr(args, "set", ())).name
    except UserError:
        return None
    path = Path(args.storage).expanduser().resolve() / name
    return str(path) if (path / "study.json").is_file() else None

"""`python -m training plan PLAN.json`: a whole training plan (teachers, their soft targets, the student) in one
command, for a machine that gives 10 minutes per command.

A plan is JSON: `defaults` (TrainConfig fields shared by every run) and `steps`, each `{"train": {...}}` (TrainConfig
fields, `minutes` its time budget) or `{"soft_targets": {"runs": [...], "out": "..."}}`, and optionally `collect`:
the files worth bringing back from a machine that is given back after the command (the student's checkpoints, the
soft targets). Every step resumes or is skipped when its output is complete, so the same command can be run again
after a cut-off, and a run that reaches its budget shortens its schedule to fit and leaves its best checkpoints in
its folder. With `--collect DIR`, after every step the `collect` files that exist so far are copied into DIR, named
by their path (`runs/gpu/student/best_ferplus.pt` -> `runs_gpu_student_best_ferplus.pt`), beside `summary.json`
(each step's result and each run's history): a command killed at its time limit still leaves the finished steps'
work there. See training/plans/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from training.data import load_dataset


def load_plan(path: str | Path) -> dict:
    plan = json.loads(Path(path).read_text())
    from training.train import TrainConfig  # noqa: PLC0415

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for i, step in enumerate(plan.get("steps", []), 1):
        (kind, args), *rest = step.items()
        if rest or kind not in ("train", "soft_targets"):
            raise ValueError(f"{path}: step {i} must be one of {{'train': ...}} or {{'soft_targets': ...}}")
        unknown = set(args) - fields if kind == "train" else set(args) - {"runs", "out"}
        if unknown:
            raise ValueError(f"{path}: step {i} ({kind}) has unknown keys {sorted(unknown)}")
    unknown = set(plan.get("defaults", {})) - fields
    if unknown:
        raise ValueError(f"{path}: defaults have unknown keys {sorted(unknown)}")
    unknown = set(plan) - {"description", "defaults", "steps", "collect"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if not all(isinstance(p, str) for p in plan.get("collect", [])):
        raise ValueError(f"{path}: collect must be a list of paths")
    return plan


def collect(paths: list[str], summary: list[dict], into: Path) -> list[Path]:
    """Copy the files of `paths` that exist into `into`, flat, named by their path; write the summary beside them
    with each train step's history. Returns what was written."""
    into.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in summary:
        history = Path(row["train"]) / "history.json" if "train" in row else None
        rows.append(
            {**row, "history": json.loads(history.read_text())["history"]} if history and history.exists() else row
        )
    written = [into / "summary.json"]
    written[0].write_text(json.dumps(rows, indent=1))
    for path in map(Path, paths):
        if path.is_file():
            target = into / "_".join(p for p in path.parts if p not in (path.anchor, ".."))
            shutil.copyfile(path, target)
            written.append(target)
    return written


def parse_steps(text: str | None, n: int) -> list[int]:
    """ "1-4", "5,6" or None (all) -> 1-based step numbers."""
    if not text:
        return list(range(1, n + 1))
    chosen = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        chosen += range(int(lo), int(hi or lo) + 1)
    if not chosen or min(chosen) < 1 or max(chosen) > n:
        raise ValueError(f"--steps {text!r}: the plan has steps 1..{n}")
    return chosen


def run_plan(
    plan: dict,
    data: str | None = None,
    minutes_scale: float = 1.0,
    steps: str | None = None,
    log=print,
    collect_into: str | Path | None = None,
) -> list[dict]:
    from training.distill import save_soft_targets, teacher_probabilities  # noqa: PLC0415
    from training.train import TrainConfig, pick_device, train  # noqa: PLC0415

    defaults = dict(plan.get("defaults", {}))
    if data:
        defaults["data"] = data
    probe = TrainConfig(**defaults)
    ds = load_dataset(probe.source, probe.data, probe.ferplus)  # read once, shared by every step
    summary, t_plan = [], time.time()
    for i in parse_steps(steps, len(plan["steps"])):
        ((kind, args),) = plan["steps"][i - 1].items()
        t0 = time.time()
        if kind == "train":
            values = {**defaults, **args}
            values["minutes"] = values.get("minutes", 0) * minutes_scale
            cfg = TrainConfig(**values)
            log(f"== step {i}/{len(plan['steps'])}: train {cfg.out} ({cfg.minutes:.1f} min budget)")
            state = train(cfg, data=ds, log=log)
            summary.append({"step": i, "train": cfg.out, "best": state["best"], "epochs": state["epoch"]})
        else:
            out = Path(args["out"])
            log(f"== step {i}/{len(plan['steps'])}: soft targets of {args['runs']} -> {out}")
            if out.exists():
                report = json.loads(out.with_suffix(".json").read_text())
                log(f"{out} exists: skipped")
            else:
                probs, report = teacher_probabilities(args["runs"], ds, list(ds.targets), pick_device("auto"), log)
                save_soft_targets(out, probs, ds, report)
                out.with_suffix(".json").write_text(json.dumps(report, indent=1))
            summary.append({"step": i, "soft_targets": str(out), **report})
        log(f"== step {i} took {(time.time() - t0) / 60:.1f} min")
        if collect_into:
            written = collect(plan.get("collect", []), summary, Path(collect_into))
            log(f"collected into {collect_into}: {', '.join(p.name for p in written)}")
    log(f"plan done in {(time.time() - t_plan) / 60:.1f} min")
    for row in summary:
        log(json.dumps(row))
    return summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="run a JSON training plan (teachers, soft targets, student) in one command",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("plan", help="plan file, e.g. training/plans/gpu.json")
    p.add_argument("--data", default=None, help="override the plan's data (a .pack on a machine without ../shared)")
    p.add_argument("--steps", default=None, help="which steps to run, e.g. 1-4 or 5,6 (default: all)")
    p.add_argument("--minutes-scale", type=float, default=1.0, help="multiply every step's time budget")
    p.add_argument("--summary", default=None, help="also write the summary as JSON here")
    p.add_argument(
        "--collect", default=None, help="after every step, copy the plan's `collect` files and summary.json here"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = run_plan(load_plan(args.plan), args.data, args.minutes_scale, args.steps, collect_into=args.collect)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
    return 0

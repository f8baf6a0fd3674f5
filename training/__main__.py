"""`python -m training train|evaluate|export`: see `--help` of each."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from training.train import TrainConfig


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the CNN; resumes from OUT/last.pt if present",
        description="Train the emotion CNN on FER2013 (+ FER+ votes) or an image folder. Every epoch "
        "prints PublicTest accuracy per head, writes OUT/last.pt (resume point), OUT/best_<head>.pt "
        "(best PublicTest accuracy) and OUT/history.json.",
    )
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, (tuple, list)):
            p.add_argument(
                flag,
                nargs="*",
                type=int if f.name != "heads" else str,
                default=default,
                help=f"(default: {' '.join(map(str, default)) or 'all'})",
            )
        elif f.name == "ferplus":
            p.add_argument(
                flag, default=default, help=f"FER+ votes file joined by row; 'none' to skip (default: {default})"
            )
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    from training import evaluate, export  # noqa: PLC0415  (keeps `train --help` fast)

    export.add_parser(sub)
    evaluate.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        from training.train import train

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        if values["ferplus"] in ("none", ""):
            values["ferplus"] = None
        values["widths"], values["convs_per_stage"] = tuple(values["widths"]), tuple(values["convs_per_stage"])
        train(TrainConfig(**values))
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

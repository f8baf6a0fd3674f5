"""`python -m training train|evaluate|export|tta|calibrate|quantize|ship|pack|soft-targets|plan|attack`: see --help."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

# What each TrainConfig field means, for `train --help` (the dataclass holds the defaults).
HELP = {
    "data": "fer2013.csv(.gz) (Kaggle layout) or, with --source folder, a root of <split>/<emotion>/*.png|jpg",
    "source": "fer2013 (CSV) or folder (train/ val/ test/ folders of emotion folders)",
    "out": "run folder: last.pt, best_<head>.pt, history.json, and final_<head>.pt when the schedule ends",
    "input_size": "network input in pixels (the 48 px faces are area-resized to it)",
    "epochs": "total epochs of the one-cycle schedule (a resumed run continues up to this)",
    "lr": "peak learning rate of the one-cycle SGD schedule",
    "label_smoothing": "mixed into every target distribution",
    "class_weight_power": "loss weight per class = frequency^-power (0: none, 1: fully balanced)",
    "widths": "channels per backbone stage (each stage halves the resolution)",
    "convs_per_stage": "3x3 convolutions per stage",
    "dropout": "dropout before the heads",
    "erase_prob": "share of training images that get a random grey rectangle (random erasing)",
    "lowres_prob": "share of training images shrunk to a random smaller size and enlarged back (small faces)",
    "lowres_min": "smallest side in pixels that --lowres-prob shrinks an image to",
    "degrade_prob": "share of training images given a camera's faults at random strengths: exposure, contrast, "
    "blur, noise",
    "val_tta": "pick checkpoints on flip-averaged PublicTest accuracy (for export with in-graph TTA)",
    "ema": "decay per step of an exponential moving average of the weights, which is then what is scored and saved "
    "(e.g. 0.999; 0: none); the trained weights' accuracy is logged as <head>_raw_val_acc",
    "threads": "torch CPU threads (0: torch's default)",
    "init": "start from the weights of this checkpoint (e.g. runs/joint/last.pt) with a fresh schedule",
    "limit": "use only the first N training images (smoke tests)",
    "heads": "label sets to train (fer2013, ferplus, folder)",
    "mean": "input normalisation after scaling pixels to [0, 1], recorded in the exported model",
    "std": "see --mean",
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the CNN; resumes from OUT/last.pt if present",
        description="Train the emotion CNN on FER2013 (+ FER+ votes) or an image folder; resumes from "
        "OUT/last.pt if present. Every epoch "
        "prints PublicTest accuracy per head, writes OUT/last.pt (resume point), OUT/best_<head>.pt "
        "(best PublicTest accuracy) and OUT/history.json; the schedule's last epoch also writes OUT/final_<head>.pt.",
    )
    from training.train import TrainConfig  # noqa: PLC0415

    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, (tuple, list)):
            p.add_argument(
                flag,
                nargs="*",
                type=int if f.name != "heads" else str,
                default=default,
                help=f"{HELP.get(f.name, '')} (default: {' '.join(map(str, default)) or 'all'})".lstrip(),
            )
        elif isinstance(default, bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{HELP.get(f.name, '')} (default: {default})".lstrip(),
            )
        elif f.name == "ferplus":
            p.add_argument(
                flag, default=default, help=f"FER+ votes file joined by row; 'none' to skip (default: {default})"
            )
        else:
            p.add_argument(
                flag, type=type(default), default=default, help=f"{HELP.get(f.name, '')} (default: {default})".lstrip()
            )


def main(argv: list[str] | None = None) -> int:
    from training.train import TrainConfig  # noqa: PLC0415  (torch: cli() says how to install it if it is missing)

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    from training import attack, calibrate, distill, evaluate, export, pack, plan, quantize, ship  # noqa: PLC0415  (keeps `train --help` fast)

    export.add_parser(sub)
    export.add_tta_parser(sub)
    evaluate.add_parser(sub)
    evaluate.add_compare_parser(sub)
    calibrate.add_parser(sub)
    pack.add_parser(sub)
    distill.add_parser(sub)
    plan.add_parser(sub)
    quantize.add_parser(sub)
    ship.add_parser(sub)
    attack.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        from training.train import train

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        if values["ferplus"] in ("none", ""):
            values["ferplus"] = None
        train(TrainConfig(**values))
        return 0
    return args.func(args)


def cli() -> int:
    """The command line (`python -m training`, `emotion-train`): a missing file or a value the data or model refuses
    ends in one line on stderr and exit status 2 instead of a traceback; `main` itself raises, for callers."""
    try:
        return main()
    except ModuleNotFoundError as exc:  # the service's install has no [train] extra
        if exc.name not in TRAIN_EXTRA:
            raise
        _error(
            f"the training package needs {exc.name}, which is not installed; install PyTorch, then the train extra: "
            "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu && "
            "pip install 'emotion-service[train]' (from a checkout: pip install -e '.[train]')"
        )
    except (ValueError, FileNotFoundError) as exc:  # DataError, ModelError and the commands' checks are ValueErrors
        _error(str(exc))
    return 2


# The modules the [train] extra brings (pyproject.toml) that `python -m training` imports.
TRAIN_EXTRA = ("torch", "onnx", "matplotlib", "tqdm")


def _error(message: str) -> None:
    prog = "emotion-train" if Path(sys.argv[0]).name == "emotion-train" else "python -m training"
    print(f"{prog}: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(cli())

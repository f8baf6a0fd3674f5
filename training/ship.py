"""`python -m training ship CHECKPOINT OUT --version V`: a trained checkpoint to the file the server serves, in one
command: the steps every shipped file went through, in their order.

1. export one head with flip averaging in the graph (`export`), with the PublicTest accuracy it was picked on;
2. int8 (`quantize`), kept only if it loses at most `--max-drop` points (else the float file goes on);
3. the crop: every margin, eye-levelled and landmark-framed crop measured end to end on the labelled photos, as
   they are and in a frame (`export --photos`), skipped with `--photos none`;
4. a temperature fitted on PublicTest so confidences mean what they say (`calibrate`);
5. the file scored on PublicTest through the server's own classifier, its scores written into its `metrics` and its
   report (metrics.json, confusion matrix, reliability diagram, learning curves) into `--report`
   (`evaluate --record`).

OUT is written only at step 4, when everything before it passed; the intermediate files live in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from training.data import add_data_arguments, ferplus_path, load_dataset

PHOTOS = "../shared/datasets/faces-in-the-wild"
YUNET = "models/face_detection_yunet_2023mar.onnx"


def ship(
    checkpoint: str | Path,
    out: str | Path,
    ds,
    *,
    version: str,
    photos: str | Path | None = None,
    yunet: str | Path | None = None,
    report_dir: str | Path | None = None,
    history: list[str | Path] | None = None,
    max_drop: float = 0.3,
    log=print,
) -> dict:
    """Run the five steps; returns the PublicTest report of the written file (its `metrics.json`)."""
    from training.calibrate import calibrate, describe  # noqa: PLC0415  (each step's module imports torch or onnx)
    from training.evaluate import write_report  # noqa: PLC0415
    from training.export import checkpoint_metrics, choose_crop, export_onnx  # noqa: PLC0415
    from training.quantize import checked_quantize  # noqa: PLC0415

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"1/5 export {checkpoint} (flip averaging in the graph)")
        model = export_onnx(
            checkpoint, Path(tmp) / "float.onnx", metrics=checkpoint_metrics(checkpoint), version=version
        )
        log("2/5 int8")
        int8 = Path(tmp) / "int8.onnx"
        if checked_quantize(model, int8, ds, max_drop=max_drop, log=log):
            model = int8
        else:
            log("   the float file goes on")
        if photos:
            log(f"3/5 crop, measured end to end on {photos}")
            choose_crop(model, photos, str(yunet) if yunet else None)
        else:
            log("3/5 crop: no photos given, the export's margin stays")
        log("4/5 calibrate")
        log(f"   {describe(calibrate(model, out, ds))}")
    if report_dir is None:  # beside the file, named by its labels, as models/ferplus/ and models/fer2013/
        import onnx  # noqa: PLC0415

        from training.metadata import read_metadata  # noqa: PLC0415

        report_dir = out.parent / read_metadata(onnx.load(str(out)))["label_source"]
    log(f"5/5 evaluate, report in {report_dir}")
    report = write_report(out, ds, report_dir, history=history, record=True)
    log(f"wrote {out}: PublicTest accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
    return report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ship",
        help="a checkpoint to a served file in one command: export, int8, crop, calibrate, evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="runs/<name>/best_<head>.pt or final_<head>.pt")
    p.add_argument("out", help="the served file to write, e.g. models/emotion_ferplus.onnx")
    p.add_argument("--version", required=True, help="the file's version, e.g. 2.1")
    add_data_arguments(p)
    p.add_argument(
        "--photos", default=PHOTOS, help=f"labelled photos to choose the crop on; 'none' to skip (default {PHOTOS})"
    )
    p.add_argument("--yunet", default=YUNET, help=f"YuNet model for the crop search; 'none': Haar (default {YUNET})")
    p.add_argument(
        "--report", default=None, help="folder for the PublicTest report (default: beside OUT, named by its labels)"
    )
    p.add_argument(
        "--history",
        nargs="+",
        default=None,
        help="history.json files for the learning curves (default: the checkpoint's run's, if there is one)",
    )
    p.add_argument("--max-drop", type=float, default=0.3, help="accuracy points int8 may lose (default 0.3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    photos = None if args.photos == "none" else args.photos
    if photos and not (Path(photos) / "labels.csv").is_file():
        raise FileNotFoundError(f"{photos}: no labels.csv of labelled photos there (--photos none skips the crop)")
    yunet = None if args.yunet == "none" else args.yunet
    history = args.history
    if history is None and (Path(args.checkpoint).parent / "history.json").is_file():
        history = [Path(args.checkpoint).parent / "history.json"]
    ds = load_dataset("fer2013", args.data, ferplus_path(args.ferplus))
    ship(
        args.checkpoint,
        args.out,
        ds,
        version=args.version,
        photos=photos,
        yunet=yunet,
        report_dir=args.report,
        history=history,
        max_drop=args.max_drop,
    )
    return 0

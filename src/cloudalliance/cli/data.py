"""The command line: make, check, split or fetch the image data set (notebook 01)."""

from __future__ import annotations

import argparse

from .common import _print_json


def cmd_data_synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import SyntheticSpec, generate_synthetic

    spec = SyntheticSpec(args.train_per_class, args.test_per_class, args.pred, args.seed, args.problem_files)
    root = generate_synthetic(args.out, spec, progress=not args.json)
    if args.json:
        _print_json({"root": str(root), **spec.to_dict()})
    else:
        print(f"synthetic data set written to {root}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from ..data.folders import load_image_folder
    from ..data.explore import validate_dataset, validate_folder

    if args.split == "all":
        reports = validate_dataset(args.path, progress=not args.json)
    else:
        split = None if args.split == "auto" else args.split
        reports = {args.split: validate_folder(load_image_folder(args.path, split), progress=not args.json)}
    if args.json:
        _print_json({k: r.to_dict() for k, r in reports.items()})
    else:
        for split, rep in reports.items():
            print(f"[{split}] {rep.summary()}")
            for p in rep.problems[: args.show]:
                print(f"    {p.kind:<13} {p.path}  ({p.detail})")
            if len(rep.problems) > args.show:
                print(f"    ... and {len(rep.problems) - args.show} more (--show N, or --json)")
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from ..data.folders import split_folder

    counts = split_folder(args.src, args.out, args.test_fraction, args.seed, copy=args.copy)
    if args.json:
        _print_json(counts)
    else:
        for split, per_class in counts.items():
            print(f"{split:<5} {sum(per_class.values()):>6}  " + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from ..data.layout import fetch_dataset

    path = fetch_dataset(args.dest)
    print(f"Intel Image Classification data set at {path}")
    return 0


def register(sub) -> None:
    """The `data` subcommands, each next to its handler above."""
    data = sub.add_parser("data", help="make, check or fetch the image data set").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("synth", help="write the synthetic data set in Kaggle's layout")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--pred", type=int, default=12, help="unlabeled images in seg_pred")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problem-files", action="store_true", help="also write broken files (for tests)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("validate", help="counts, sizes, modes and problem files of a data folder")
    p.add_argument("path")
    p.add_argument("--split", default="all", choices=["all", "auto", "train", "test", "pred"],
                   help="all: every seg_* split found; auto: PATH holds the class folders")
    p.add_argument("--show", type=int, default=20, help="problems to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("split", help="stratified train/test split of a labeled folder (links, or --copy)")
    p.add_argument("src", help="Kaggle root, seg_train folder or flat class folders")
    p.add_argument("--out", required=True, help="writes OUT/train/<class> and OUT/test/<class>")
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_split)
    p = data.add_parser("fetch", help="download the real data set with kagglehub (needs internet)")
    p.add_argument("--dest", help="link the download here")
    p.set_defaults(func=cmd_data_fetch)

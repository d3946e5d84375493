"""The command line: run the notebooks with papermill."""

from __future__ import annotations

import argparse
import time


def cmd_course_run(args: argparse.Namespace) -> int:
    import signal

    from ..course import parse_overrides, run_course

    def stop(signum, frame):  # `kill` stops the course like Ctrl-C: its servers are stopped on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    t0 = time.perf_counter()
    result = run_course(args.params, run_id=args.run_id, only=args.only, log_output=args.verbose,
                        overrides=parse_overrides(args.set))
    print(f"[course] {len(result.results)} notebooks passed in {time.perf_counter() - t0:.1f} s")
    print(f"[course] run folder: {result.run.path}")
    print(f"[course] report:     {result.report}")
    return 0


def register(sub) -> None:
    """The `course` subcommands, each next to its handler above."""
    course = sub.add_parser("course", help="run the notebooks with papermill").add_subparsers(
        dest="action", required=True)
    p = course.add_parser("run", help="run the course's notebooks in order")
    p.add_argument("--params", default="params/local.yaml",
                   help="the parameter file (default: params/local.yaml; params/aws.yaml for a real AWS run)")
    p.add_argument("--run-id", help="the run's folder under runs/ (default: the file's run_id, else a timestamp); "
                                    "an existing one is continued")
    p.add_argument("--only", nargs="+", metavar="PREFIX",
                   help="run only notebooks whose name starts with these (e.g. --only 05 06); default: all")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a notebook parameter for this run, e.g. --set DATA_SOURCE=/data/intel (relative paths "
                        "are taken from the current folder); repeat for several")
    p.add_argument("--verbose", action="store_true", help="show the notebooks' output as they run")
    p.set_defaults(func=cmd_course_run)

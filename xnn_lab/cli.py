"""The ``xnn-lab`` command: ``zoo list|train|check``, ``chapters``, ``bench``, ``performance``, ``grade`` and
``exercises``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from xnn_lab.grading.cli import add_parsers as add_grading_parsers


def _zoo(args: argparse.Namespace) -> int:
    from xnn_lab import zoo

    if args.action == "list":
        for name in zoo.names():
            print(f"{name:24s} {zoo.RECIPES[name].description}")
        return 0
    targets = args.names or zoo.names()
    failed = 0
    for name in targets:
        if args.action == "train":
            _, info = zoo.train(name, directory=args.dir, progress=not args.quiet)
            print(f"{name}: trained in {info['trained_with']['seconds']} s, metrics {info['metrics']}")
        else:
            try:
                result = zoo.check(name, directory=args.dir)
                print(f"{name}: ok " + ", ".join(f"{m} {c:.4f} (card) {v:.4f} (now)" for m, (c, v) in result.items()))
            except AssertionError as err:
                failed += 1
                print(f"{name}: FAILED {err}")
    return 1 if failed else 0


def _chapters(args: argparse.Namespace) -> int:
    from xnn_lab._runtime import device
    from xnn_lab.chapters import run_chapters

    print(f"device: {device()}" + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    if args.require_cuda and not torch.cuda.is_available():
        print("error: --require-cuda given but CUDA is not available", file=sys.stderr)
        return 1
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    runs = []
    for run in run_chapters(args.notebooks, quick=args.quick, jobs=args.jobs):
        runs.append(run)
        status = "ok" if run.error is None else "FAILED"
        print(f"{run.path}: {run.seconds:.1f} s ({'quick' if args.quick else 'full'} mode) {status}", flush=True)
        if run.error is not None:
            print(run.error, file=sys.stderr)
    wall = time.perf_counter() - start
    print(f"all chapters: {wall:.1f} s wall, {args.jobs} at a time")
    failed = [run.path for run in runs if run.error is not None]
    if failed:
        print(f"error: {len(failed)} chapter(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.json:
        from xnn_lab.performance import save_record

        results = {Path(run.path).stem: run.seconds for run in runs}
        results["all (wall)"] = wall
        settings = {"mode": "quick" if args.quick else "full", "jobs": args.jobs}
        save_record(args.json, "chapters", settings, results, device())
        print(f"record written to {args.json}")
    return 0


# The benchmarks of ``xnn-lab bench`` and the command-line settings each one takes.
BENCHMARKS = {
    "cam": ("bench_cam", ("model", "layer", "batch_size", "image_size", "num_classes", "steps")),
    "influence": ("bench_influence", ()),
    "protopnet": ("bench_protopnet", ("n", "image_size", "backbone", "batch_size")),
}


def _bench(args: argparse.Namespace) -> int:
    import inspect

    from xnn_lab import bench
    from xnn_lab._runtime import device
    from xnn_lab.performance import save_record

    function_name, names = BENCHMARKS[args.what]
    others = {name for _, options in BENCHMARKS.values() for name in options} - set(names)
    stray = sorted(name for name in others if getattr(args, name) is not None)
    if stray:
        options = ", ".join("--" + name.replace("_", "-") for name in stray)
        print(f"error: bench {args.what} does not take {options}", file=sys.stderr)
        return 2
    function = getattr(bench, function_name)
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    results = function(**given, repeats=args.repeats, device=args.device)
    if args.json:
        defaults = {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
                    if name in names}
        save_record(args.json, args.what, {**defaults, **given}, results, args.device or device())
        print(f"record written to {args.json}")
    return 0


def _performance(args: argparse.Namespace) -> int:
    from xnn_lab.performance import load_records, render_page

    records = load_records(args.records)
    Path(args.output).write_text(render_page(records))
    print(f"{args.output}: {len(records)} records")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xnn-lab", description="Tools of the xnn-lab course.")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo_parser = sub.add_parser("zoo", help="list, train (reproduce) or check the model zoo")
    zoo_parser.add_argument("action", choices=["list", "train", "check"])
    zoo_parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    zoo_parser.add_argument("--dir", default=None, help="checkpoint folder (default: the package's)")
    zoo_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    zoo_parser.set_defaults(run=_zoo)

    chapters_parser = sub.add_parser("chapters", help="run chapters as scripts and print their timings")
    chapters_parser.add_argument("notebooks", nargs="+")
    chapters_parser.add_argument("--quick", action="store_true", help="quick mode (XNN_LAB_QUICK=1)")
    chapters_parser.add_argument("--require-cuda", action="store_true", help="fail when no GPU is visible")
    chapters_parser.add_argument("--jobs", type=int, default=1,
                                 help="chapters run at once, each in its own process (default 1: in this one)")
    chapters_parser.add_argument("--json", default=None, metavar="FILE",
                                 help="also save the timings, mode, date and hardware as a record")
    chapters_parser.set_defaults(run=_chapters)

    bench_parser = sub.add_parser("bench", help="time methods against their floor and peer libraries")
    bench_parser.add_argument("what", choices=sorted(BENCHMARKS))
    bench_parser.add_argument("--model", help="cam: torchvision classifier, random weights (default resnet18)")
    bench_parser.add_argument("--layer", help="cam: layer to explain (default layer4)")
    bench_parser.add_argument("--backbone", help="protopnet: small_cnn or a torchvision classifier")
    bench_parser.add_argument("--n", type=int, help="protopnet: training images")
    bench_parser.add_argument("--batch-size", type=int)
    bench_parser.add_argument("--image-size", type=int)
    bench_parser.add_argument("--num-classes", type=int, help="cam: classes of the model")
    bench_parser.add_argument("--steps", type=int, help="cam: deletion/insertion steps")
    bench_parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts")
    bench_parser.add_argument("--device", default=None, help="default: CUDA when present")
    bench_parser.add_argument("--json", default=None, metavar="FILE",
                              help="also save the results, settings, date and hardware as a record")
    bench_parser.set_defaults(run=_bench)

    performance_parser = sub.add_parser("performance", help="write the book's Performance page from bench records")
    performance_parser.add_argument("records", nargs="?", default="benchmarks", help="folder of records")
    performance_parser.add_argument("--output", default="book/performance.md")
    performance_parser.set_defaults(run=_performance)

    add_grading_parsers(sub)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

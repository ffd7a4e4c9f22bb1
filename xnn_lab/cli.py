"""The ``xnn-lab`` command: ``zoo list|train|check``, ``bench``, ``grade`` and ``exercises``."""

from __future__ import annotations

import argparse
import sys

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


# The benchmarks of ``xnn-lab bench`` and the command-line settings each one takes.
BENCHMARKS = {
    "cam": ("bench_cam", ("model", "layer", "batch_size", "image_size", "num_classes", "steps")),
    "influence": ("bench_influence", ()),
    "protopnet": ("bench_protopnet", ("n", "image_size", "backbone", "batch_size")),
}


def _bench(args: argparse.Namespace) -> int:
    import inspect

    from xnn_lab import bench
    from xnn_lab._core.runtime import device

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
        bench.save_record(args.json, args.what, {**defaults, **given}, results, args.device or device())
        print(f"record written to {args.json}")
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

    add_grading_parsers(sub)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

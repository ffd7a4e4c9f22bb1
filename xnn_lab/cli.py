"""The ``xnn-lab`` command: ``zoo list|train|check``, ``chapters`` and ``bench cam``."""

from __future__ import annotations

import argparse
import sys

import torch


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
    from xnn_lab.chapters import run_chapter

    print(f"device: {device()}" + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    if args.require_cuda and not torch.cuda.is_available():
        print("error: --require-cuda given but CUDA is not available", file=sys.stderr)
        return 1
    total = 0.0
    for path in args.notebooks:
        seconds = run_chapter(path, quick=args.quick)
        total += seconds
        print(f"{path}: {seconds:.1f} s ({'quick' if args.quick else 'full'} mode)", flush=True)
    print(f"all chapters: {total:.1f} s")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from xnn_lab.bench import bench_cam

    bench_cam(args.model, layer=args.layer, batch_size=args.batch_size, image_size=args.image_size,
              num_classes=args.num_classes, steps=args.steps, repeats=args.repeats, device=args.device)
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
    chapters_parser.set_defaults(run=_chapters)

    bench_parser = sub.add_parser("bench", help="time methods against their floor and peer libraries")
    bench_parser.add_argument("what", choices=["cam"])
    bench_parser.add_argument("--model", default="resnet18", help="torchvision classifier, random weights")
    bench_parser.add_argument("--layer", default="layer4")
    bench_parser.add_argument("--batch-size", type=int, default=8)
    bench_parser.add_argument("--image-size", type=int, default=112)
    bench_parser.add_argument("--num-classes", type=int, default=1000)
    bench_parser.add_argument("--steps", type=int, default=8)
    bench_parser.add_argument("--repeats", type=int, default=5)
    bench_parser.add_argument("--device", default=None)
    bench_parser.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

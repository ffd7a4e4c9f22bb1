"""The ``xnn-lab`` command: ``zoo list|train|check``, ``bench``, ``grade`` and ``exercises``.

Building the parser imports nothing heavy, so ``--help`` and ``--version`` answer at once; each
subcommand imports PyTorch (and its other needs) when it runs. A user's mistake (a missing file,
an unknown name, a flag out of range) prints ``xnn-lab: error: ...`` on stderr and exits with
status 2, without a traceback; ``--debug`` shows it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from xnn_lab import __version__
from xnn_lab._core.errors import UsageError
from xnn_lab.grading.cli import add_parsers as add_grading_parsers

# The benchmarks of ``xnn-lab bench`` and the command-line settings each one takes.
BENCHMARKS = {
    "cam": ("bench_cam", ("model", "layer", "batch_size", "image_size", "num_classes", "steps")),
    "graphs": ("bench_graphs", ()),
    "influence": ("bench_influence", ()),
    "protopnet": ("bench_protopnet", ("n", "image_size", "backbone", "batch_size")),
}

# Errors of a run that come from what the user asked for, reported without a traceback.
_USER_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
                IsADirectoryError, PermissionError)

# The extra that installs what each command imports beyond the package's own dependencies.
EXTRAS = {"grade": ("grading", ("nbformat", "nbclient", "jupyter_client", "nbgrader", "ipykernel")),
          "exercises": ("grading", ("nbformat", "nbconvert", "nbgrader"))}


def _require_extra(command: str) -> None:
    """Raise a UsageError naming the extra to install when ``command`` lacks a module it needs."""
    extra, modules = EXTRAS[command]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"`xnn-lab {command}` needs the [{extra}] extra, which is not installed (missing: "
                         f"{', '.join(missing)}): pip install 'xnn_lab[{extra}]'")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device_name(text: str) -> str:
    """An argparse type: a device that exists here ('cpu', 'cuda', 'cuda:1')."""
    from xnn_lab._core.checks import check_device

    try:
        check_device("device", text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("device ")) from None
    return text


def _existing_folder(text: str) -> Path:
    """An argparse type: a folder that exists."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if path.exists() else f"{text!r} does not exist")
    return path


def _output_file(text: str) -> Path:
    """An argparse type: a file to write (its folder is made on writing); not a folder."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name such as {text.rstrip('/')}/record.json")
    return path


def _zoo(args: argparse.Namespace) -> int:
    from xnn_lab import zoo

    unknown = [name for name in args.names if name not in zoo.names()]
    if unknown:
        raise UsageError(f"unknown zoo model{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                         f"the zoo has {', '.join(zoo.names())}")
    if args.action == "list":
        for name in args.names or zoo.names():
            print(f"{name:24s} {zoo.RECIPES[name].description}")
        return 0
    targets = args.names or zoo.names()
    if args.action == "train":
        folder = args.dir or zoo.user_directory()
        taken = [name for name in targets if (folder / f"{name}.json").exists() or
                 (folder / f"{name}.safetensors").exists()]
        if taken and not args.force:
            raise UsageError(f"{', '.join(taken)} already in {folder}: pass --force to overwrite")
        for name in targets:
            _, info = zoo.train(name, directory=folder, progress=not args.quiet, overwrite=args.force)
            print(f"{name}: trained in {info['trained_with']['seconds']} s, metrics {info['metrics']}, "
                  f"written to {folder}")
        return 0
    failed = 0
    for name in targets:
        try:
            result = zoo.check(name, directory=args.dir)
            print(f"{name}: ok " + ", ".join(f"{m} {c:.4f} (card) {v:.4f} (now)" for m, (c, v) in result.items()))
        except AssertionError as err:
            failed += 1
            print(f"{name}: FAILED {err}")
    return 1 if failed else 0


def _bench(args: argparse.Namespace) -> int:
    import inspect

    from xnn_lab import bench
    from xnn_lab._core.runtime import device

    function_name, names = BENCHMARKS[args.what]
    others = {name for _, options in BENCHMARKS.values() for name in options} - set(names)
    stray = sorted(name for name in others if getattr(args, name) is not None)
    if stray:
        options = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise UsageError(f"bench {args.what} does not take {options}")
    function = getattr(bench, function_name)
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    results = function(**given, repeats=args.repeats, device=args.device)
    if args.json:
        defaults = {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
                    if name in names}
        bench.save_record(args.json, args.what, {**defaults, **given}, results, args.device or device())
        print(f"record written to {args.json}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    """The ``xnn-lab`` parser, with every subcommand; imports nothing heavy."""
    parser = argparse.ArgumentParser(prog="xnn-lab", description="Tools of the xnn-lab course.")
    parser.add_argument("--version", action="version", version=f"xnn-lab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{zoo,bench,grade,exercises}")

    zoo_parser = sub.add_parser("zoo", help="list, train (reproduce) or check the model zoo",
                                description="List, train (reproduce) or check the model zoo. Training writes to "
                                            "your zoo folder ($XNN_LAB_ZOO, else ~/.local/share/xnn_lab/zoo), "
                                            "never into the installed package unless --dir names it.")
    zoo_parser.add_argument("action", choices=["list", "train", "check"])
    zoo_parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    zoo_parser.add_argument("--dir", type=_existing_folder, default=None,
                            help="checkpoint folder (train: default your zoo folder; list/check: default "
                                 "your zoo folder where it has the model, else the package's)")
    zoo_parser.add_argument("--force", action="store_true", help="train: overwrite checkpoints already there")
    zoo_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    zoo_parser.set_defaults(run=_zoo)

    bench_parser = sub.add_parser("bench", help="time methods against their floor and peer libraries")
    bench_parser.add_argument("what", choices=sorted(BENCHMARKS))
    bench_parser.add_argument("--model", help="cam: torchvision classifier, random weights (default resnet18)")
    bench_parser.add_argument("--layer", help="cam: layer to explain (default layer4)")
    bench_parser.add_argument("--backbone", help="protopnet: small_cnn or a torchvision classifier")
    bench_parser.add_argument("--n", type=_positive_int, help="protopnet: training images")
    bench_parser.add_argument("--batch-size", type=_positive_int)
    bench_parser.add_argument("--image-size", type=_positive_int)
    bench_parser.add_argument("--num-classes", type=_positive_int, help="cam: classes of the model")
    bench_parser.add_argument("--steps", type=_positive_int, help="cam: deletion/insertion steps")
    bench_parser.add_argument("--repeats", type=_positive_int, default=3, help="timed rounds; the best counts")
    bench_parser.add_argument("--device", type=_device_name, default=None, help="default: CUDA when present")
    bench_parser.add_argument("--json", type=_output_file, default=None, metavar="FILE",
                              help="also save the results, settings, date and hardware as a record")
    bench_parser.set_defaults(run=_bench)

    add_grading_parsers(sub)
    for command in sub.choices.values():  # --debug after the subcommand works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)  # a malformed command line exits 2 here, with the usage
    try:
        if args.command in EXTRAS:
            _require_extra(args.command)
        return args.run(args)
    except _USER_ERRORS as err:
        if args.debug:
            raise
        print(f"xnn-lab: error: {err} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

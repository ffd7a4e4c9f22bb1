"""The one error type of the command line (kept free of heavy imports, so ``--help`` is fast)."""


class UsageError(Exception):
    """A command was called wrongly (a missing file, an unknown name, a flag out of range).

    ``xnn-lab`` prints its message as ``xnn-lab: error: ...`` on stderr and exits with status 2,
    without a traceback (``--debug`` shows it).
    """

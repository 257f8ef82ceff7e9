"""User-facing errors: the CLI prints their message as one line on stderr and exits with status 2."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first non-blank line of an exception's message, for one-line errors; ``default`` (the exception's
    type name when None) when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else (type(exc).__name__ if default is None else default)


def plugin_failure(exc: BaseException) -> str:
    """What a plugin did wrong, for a one-line error: ``raised T: message``, or ``called sys.exit(code)``
    (a SystemExit inside a plugin is its fault, not the end of ``bench``)."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"raised {type(exc).__name__}: {first_line(exc, '(no message)')}"


class BenchError(Exception):
    """A problem with what the user asked for (bad name, bad value, bad file), not a bug in benchbench."""


class InvalidArgument(BenchError, ValueError):
    """A value outside its allowed range (σ ≤ 0, α ∉ (0, 1), …)."""


class UnknownName(BenchError, KeyError):
    """A registry lookup for a name nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(BenchError):
    """A model that is missing, corrupt, or cannot be fetched."""


class RunConflict(BenchError):
    """An output directory that already holds a run with a different configuration."""


class PluginFault(BenchError):
    """A purifier or classifier that broke its contract while running (raised, or returned NaN, the wrong
    shape, dtype or scale). Rows already written stay valid; the CLI exits with status 1."""


class ResourceError(BenchError):
    """The machine ran out of something while running (memory, disk space, a writable file system).
    The CLI exits with status 1; rows written so far are kept and a rerun resumes."""

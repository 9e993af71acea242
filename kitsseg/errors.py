"""The one exception type for problems a user can fix (bad file, bad flag, bad dataset)."""


class KitssegError(Exception):
    """A user-facing error: its message is one line naming the file or case and the problem."""


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def use_one_line_warnings() -> None:
    """Print warnings as 'warning: <message>', without source lines (also in worker processes)."""
    import warnings

    warnings.formatwarning = _one_line_warning

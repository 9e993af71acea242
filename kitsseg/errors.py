"""The one exception type for problems a user can fix (bad file, bad flag, bad dataset)."""


class KitssegError(Exception):
    """A user-facing error: its message is one line naming the file or case and the problem."""

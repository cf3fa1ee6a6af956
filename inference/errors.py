"""The one exception type the CLI turns into a clean `error: ...` line and exit code 2."""


class UserError(ValueError):
    """A problem the user can fix: the message names the problem and the fix."""

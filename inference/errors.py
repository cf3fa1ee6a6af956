"""The exception type the CLI turns into a clean `error: ...` line and exit code 2, and its kinds that the
server tells apart by type (never by message text)."""


class UserError(ValueError):
    """A problem the user can fix: the message names the problem and the fix."""


class PromptTooLong(UserError):
    """The prompt does not fit the engine's context window (max_model_len)."""

"""The exception type the CLI turns into a clean `error: ...` line and exit code 2, and its kinds that the
server tells apart by type (never by message text)."""

import argparse


class UserError(ValueError):
    """A problem the user can fix: the message names the problem and the fix."""


class PromptTooLong(UserError):
    """The prompt does not fit the engine's context window (max_model_len)."""


class CliParser(argparse.ArgumentParser):
    """argparse whose bad flag is one `error: ...` line pointing at --help (exit 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

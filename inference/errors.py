"""The one exception type the CLI turns into a clean `error: ...` line and exit code 2."""

import argparse


class UserError(ValueError):
    """A problem the user can fix: the message names the problem and the fix."""


class CliParser(argparse.ArgumentParser):
    """argparse whose bad flag is one `error: ...` line pointing at --help (exit 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

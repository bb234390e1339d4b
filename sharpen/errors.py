"""User-facing errors: one line that names the problem and the fix; the CLI exits with code 2."""


class SharpenError(Exception):
    """A problem with the user's input or environment, not a bug. The message says what to do."""

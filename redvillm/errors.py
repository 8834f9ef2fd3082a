"""The one exception type a user sees as a single line (CLI exit code 2, no traceback)."""


class UserError(Exception):
    """Bad input or a refused operation; the message names the file and the fix."""

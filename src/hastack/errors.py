"""One exception type for every error a user can act on.

The CLI prints its message as a single line on stderr and exits non-zero; anything else
escaping is a bug.
"""


class HastackError(Exception):
    """An error with a message that says what is wrong and what to do."""

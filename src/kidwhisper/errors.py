"""The one base class of the errors a user can fix.

Every such error (a bad config key, a malformed manifest line, an unreadable clip under the
fail policy, a submission that cannot be built...) derives from `UserError`; the command
line prints it as one line naming the file, key or line and what to do, and exits with 2.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


# What the command line reports in one line (exit 2): a missing or existing file is one too.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError)

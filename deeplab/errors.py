"""The one exception type for bad input: wrong files, flags or data the user can fix.

Its message is a single line that says what is wrong, where (file, split, flag) and what was
expected. The steps print it as `error: <message>` and exit non-zero; anything else that escapes is
a bug and is reported with its traceback.
"""


class UserError(Exception):
  """Bad input from the user; `str(e)` is the one-line explanation."""

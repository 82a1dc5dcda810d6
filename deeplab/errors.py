"""The one exception type for bad input: wrong files, flags or data the user can fix.

Its message is a single line that says what is wrong, where (file, split, flag) and what was
expected. The steps print it as `error: <message>` and exit non-zero; anything else that escapes is
a bug and is reported with its traceback.
"""


class UserError(Exception):
  """Bad input from the user; `str(e)` is the one-line explanation."""


def tf_error_summary(error) -> str:
  """The informative line of a TensorFlow OpError's message.

  Graph-mode errors start with 'Graph execution error:' and end with node annotations; the line in
  between that says what happened (e.g. 'Data loss: corrupted record at 0') is the one to show.
  """
  message = getattr(error, 'message', None) or str(error)
  lines = [line.strip() for line in message.splitlines()]
  useful = [line for line in lines if line and not line.startswith(('[[', 'Graph execution error',
                                                                       'Detected at node', 'File "'))]
  return (useful[-1] if useful else lines[0] if lines else type(error).__name__)[:300]

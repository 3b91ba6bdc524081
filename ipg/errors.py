"""The one error type for bad user input (files, configs, model paths, layer indices, values).

Its message names the offending field (file and line, dotted config key, argument) and the fix, so the
CLI prints it as one line without a traceback.
"""


class InputError(ValueError):
    """Invalid user input; the message says which field is wrong and how to fix it."""

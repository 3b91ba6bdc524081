"""The one error type for bad user input (files, configs, model paths, layer indices, values).

Its message names the offending field (file and line, dotted config key, argument) and the fix, so the
CLI prints it as one line without a traceback.
"""


class InputError(ValueError):
    """Invalid user input; the message says which field is wrong and how to fix it."""


class ExampleError(InputError):
    """One example could not be processed (its signal raised or returned a non-finite reward).

    Carries the example id so a distributed run can apply its policy: fail naming the shard and the
    example, or skip the example and count it. Picklable (crosses process boundaries intact).
    """

    def __init__(self, example_id: str, message: str):
        super().__init__(example_id, message)
        self.example_id, self.message = example_id, message

    def __str__(self) -> str:
        return self.message

"""Error types that the command-line layer maps to exit codes.

The library raises `InputError` for anything the user can fix (a bad config value, a missing
or malformed file, a prompt that does not fit): the CLI prints its message as one line and
exits with status 2. Every other exception is a runtime failure (exit 1).
"""


class InputError(Exception):
    """Bad user input: a config, data, prompt, checkpoint or tokenizer file that cannot be used.

    The message must name the offending file or field and say what is wrong, because it is
    all the user sees.
    """

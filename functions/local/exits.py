"""The `imagepipe` commands' exit codes, for every subcommand and the CLI itself.

0: every image completed (or a listing was printed); 1: an image failed, timed out or
has no record; 2: bad usage, configuration, or a pipeline that cannot be reached.
A module of its own because `cli` imports every subcommand: they cannot import it back.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

"""The `imagepipe` commands' exit codes, for every subcommand and the CLI itself.

0: every image completed (or a listing was printed); 1: an image failed, timed out or
has no record; 2: bad usage, configuration, or a pipeline that cannot be reached.
As a shell reports a process ended by a signal: 130 for Ctrl-C (SIGINT), 141 when the
reader of its output went away (SIGPIPE, as in `imagepipe status --status FAILED | head`).
A module of its own, light enough for every subcommand to import without pulling in another.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141

"""The exit codes of every `lazyaccept` command, in one place (the README's "Exit codes" table lists them)."""

EXIT_BOOTED = 0  # the command did what it was asked: booted to the kernel with a sound handoff, or printed its result
EXIT_FAILED = 1  # the run ended otherwise: a loader or the stub failed, a bad handoff, a budget, a crash in the model
EXIT_BAD_INPUT = 2  # bad input: a malformed value, a file that cannot be read or parsed (one line names it)
EXIT_MEMORY_LOST = 3  # the kernel was entered but RAM of the TD is lost to the OS (unaccepted, left out of e820)
EXIT_TERMINATED = 4  # the TDX module terminated the TD
EXIT_INTERRUPTED = 130  # Ctrl-C

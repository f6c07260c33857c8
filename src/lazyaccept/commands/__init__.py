"""Subcommands of the `lazyaccept` CLI; each module offers register(subparsers) -> name and run(args) -> int."""

"""CLI subcommands: each module parses arguments and calls the library."""

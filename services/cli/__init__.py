"""The ``damselfly`` command line: one subcommand per service or tool."""

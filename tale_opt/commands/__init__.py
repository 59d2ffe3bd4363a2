"""The command line: `python -m tale_opt <subcommand>`, one module per subcommand."""

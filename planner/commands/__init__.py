"""One module per `python -m planner` subcommand."""

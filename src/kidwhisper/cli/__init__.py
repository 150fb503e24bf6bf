"""The `kidwhisper` command: the argument parser (main.py) and its subcommands."""

"""The commands: `python -m inference <command>` (cli.py) and the modules that run them."""

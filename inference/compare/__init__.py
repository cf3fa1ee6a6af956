"""`qwen-chat compare`: the same prompts through two engines, greedy, side by side (cli.py)."""

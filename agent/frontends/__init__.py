"""Front ends: command-line options, the one-shot CLI, the terminal chat, task files and their runner and reports."""

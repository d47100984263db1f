"""`python -m agent`: the same as the `kernelchat` command."""

from agent.frontends.cli import run

run()

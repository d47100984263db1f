"""Tests only: open the terminal chat in-process with a scripted model.

    python -c "import tests.agent.frontends.repl_harness as h; h.main()" [kernelchat flags]

KERNELCHAT_SCRIPT names a JSON list of replies, in request order: a string is a text answer,
{"python": CODE} calls the python tool. Without it, the real model of --model answers.
KERNELCHAT_SCRIPT_SMALL=1 scripts a model without tool training (the small-model mode).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    from agent.frontends import repl
    from agent.models.scripted import ScriptedBackend, python_call
    from agent.frontends.cli import prompt_parser

    args = prompt_parser().parse_args(sys.argv[1:])
    backend = None
    if os.environ.get("KERNELCHAT_SCRIPT"):
        with open(os.environ["KERNELCHAT_SCRIPT"]) as f:
            items = json.load(f)
        replies = [python_call(i["python"]) if isinstance(i, dict) else i for i in items]
        if os.environ.get("KERNELCHAT_SCRIPT_SMALL"):  # a model without tool training: the small-model mode
            from agent.core.backend import Capabilities

            backend = ScriptedBackend(replies, capabilities=Capabilities(tools=False, streaming=False))
        else:
            backend = ScriptedBackend(replies)
    sys.exit(repl.main(args, backend=backend))

"""The slash-command parser: pure, no chat needed."""

import pytest

from agent.frontends.commands import COMMANDS, Command, CommandError, is_command, parse


@pytest.mark.parametrize("line, expected", [
    ("/edit", Command("edit")),
    ("/edit 3", Command("edit", index=3)),
    ("/e 2", Command("edit", index=2)),
    ("/undo", Command("undo")),
    ("/retry", Command("retry")),
    ("/branches", Command("branches")),
    ("/branches --all", Command("branches", arg="--all")),
    ("/switch ab12", Command("switch", arg="ab12")),
    ("/tokens", Command("tokens")),
    ("/budget", Command("budget")),
    ("/budget set max_usd=0.5 max_tokens=2000", Command("budget", options={"max_usd": 0.5, "max_tokens": 2000})),
    ("/budget max_steps=none", Command("budget", options={"max_steps": None})),
    ("/model", Command("model")),
    ("/model gpt-4o-mini", Command("model", arg="gpt-4o-mini")),
    ("/system", Command("system")),
    ("/system You are terse.  Answer in one line.", Command("system", arg="You are terse.  Answer in one line.")),
    ("/save", Command("save")),
    ("/save 'my conv.json'", Command("save", arg="my conv.json")),
    ("/load c.json", Command("load", arg="c.json")),
    ("/export html out/c.html", Command("export", fmt="html", arg="out/c.html")),
    ("/kernel restart", Command("kernel", arg="restart")),
    ("/kernel reset", Command("kernel", arg="reset")),
    ("/files", Command("files")),
    ("/upload data.csv", Command("upload", arg="data.csv")),
    ("/notebook 'my nb.ipynb'", Command("notebook", arg="my nb.ipynb")),
    ("/help", Command("help")),
    ("/?", Command("help")),
    ("/quit", Command("quit")),
    ("/exit", Command("quit")),
    ("  /QUIT  ", Command("quit")),
])
def test_parses(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize("line, message", [
    ("/frobnicate", "unknown command /frobnicate"),
    ("/bra", "did you mean /branches"),
    ("/edit x", "prompt number from 1"),
    ("/edit 0", "prompt number from 1"),
    ("/switch", "/switch needs an argument"),
    ("/load", "/load needs an argument"),
    ("/load a b", "one argument"),
    ("/save 'unclosed", "/save:"),
    ("/export pdf x", "md|html"),
    ("/export md", "md|html"),
    ("/kernel", "/kernel restart"),
    ("/kernel stop", "/kernel restart"),
    ("/budget set", "needs KEY=VALUE"),
    ("/budget max_usd", "KEY=VALUE"),
    ("/budget max_cats=3", "unknown key"),
    ("/budget max_tokens=1.5", "integer"),
    ("/budget max_usd=-1", "positive"),
    ("/undo now", "takes no arguments"),
    ("/branches all", "--all"),
])
def test_bad_commands_explain_in_one_line(line, message):
    with pytest.raises(CommandError) as e:
        parse(line)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_prompts_that_start_with_a_path_are_not_commands():
    assert is_command("/help") and is_command("/edit 2")
    assert not is_command("/usr/bin has what?") and not is_command("what is /edit?")


def test_every_command_has_a_handler():
    import agent.frontends.commands as c

    assert all(callable(getattr(c, f"_do_{name}", None)) for name in COMMANDS)


def test_branches_fold_the_attempts_not_taken_and_show_outcomes(tmp_path):
    from rich.console import Console

    from agent import Chat
    from agent.core.backend import Capabilities
    from agent.frontends.commands import branch_tree
    from agent.models.scripted import ScriptedBackend

    fence = "```python\n{}\n```".format
    backend = ScriptedBackend([fence("print(nope)"), "no code", fence("print(6 * 7)"), fence("x = 1"), fence("y = 2")],
                              capabilities=Capabilities(tools=False, streaming=False))
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        chat.attempts = 3
        assert chat("What is 6 * 7?") == "42"
        chat.attempts = 2
        chat("And x?")

        def shown(all_: bool) -> str:
            console = Console(record=True, width=200)
            console.print(branch_tree(chat, all=all_))
            return console.export_text()

        folded, everything = shown(False), shown(True)
    assert "(+2 attempts not taken: /branches --all)" in folded and "[stopped]" in folded
    assert "(+1 attempt not taken" in folded
    assert folded.count("○") + folded.count("●") == 1  # one branch: the active one
    assert everything.count("○") + everything.count("●") == 4 and "[set_aside]" in everything


def test_branches_of_a_file_written_before_labels_are_shown_as_before():
    """A file whose replies carry `"attempt": N` and whose attempts not taken end in "attempt"."""
    from pathlib import Path
    from types import SimpleNamespace

    from rich.console import Console

    from agent.core import store
    from agent.frontends.commands import branch_tree

    path = Path(__file__).resolve().parents[2] / "data" / "attempts_before_labels.json"
    chat = SimpleNamespace(tree=store.load(path).tree)

    def shown(all_: bool) -> list[str]:
        console = Console(record=True, width=200)
        console.print(branch_tree(chat, all=all_))
        return [line.rstrip() for line in console.export_text().splitlines()]

    assert shown(False) == ["conversation",
                            "└── You [1] What is 6 * 7?  (+2 attempts not taken: /branches --all)",
                            "    └── You [2] And x?  (+1 attempt not taken: /branches --all)",
                            "        └── ● bt2  [stopped]"]
    assert shown(True) == ["conversation",
                           "└── You [1] What is 6 * 7?",
                           "    ├── ○ t1  [set_aside]  NameError: name 'nope' is not defined",
                           "    ├── ○ a2  [set_aside]  no code",
                           "    └── You [2] And x?",
                           "        ├── ○ bt1  [set_aside]",
                           "        └── ● bt2  [stopped]"]

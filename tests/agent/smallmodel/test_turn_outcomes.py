"""How a small-model turn ended is stored on the turn: failed attempts are folded under it, a
figure is a result, and a value an earlier turn printed is not this turn's answer (real kernels)."""

from agent import Chat
from agent.core import store
from agent.core.backend import Capabilities
from agent.models.scripted import ScriptedBackend

SMALL = Capabilities(tools=False, streaming=False)


def code(text: str) -> str:
    return f"```python\n{text}\n```"


def test_a_turn_without_a_value_is_stored_as_stopped_and_its_attempts_folded(tmp_path):
    path = tmp_path / "conv.json"
    backend = ScriptedBackend([code("x = 1"), "no code here", code("y = 2")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False, path=path) as chat:
        chat.attempts = 3
        events = list(chat.run("What is x?"))
        assert events[-1].outcome == "stopped"
        assert events[-1].text == "[stopped after 3 attempts without printing a value]"
        assert not any(e.kind == "notice" and "printed a value" in e.text for e in events)  # once: the answer
        assert chat.last_outcome.status == "stopped"
        shown = chat.branches()
        assert len(shown) == 1 and shown[0].active and shown[0].outcome == "stopped" and shown[0].set_aside == 2
        everything = chat.branches(all=True)
        assert len(everything) == 3
        assert sorted(b.outcome for b in everything) == ["set_aside", "set_aside", "stopped"]
        starts = sorted(n.label for n in chat.tree.nodes.values() if n.alternative)
        assert starts == ["attempt 1", "attempt 2", "attempt 3"]
        assert all(n.label is None for n in chat.tree.nodes.values() if not n.alternative)
    saved = store.load(path)  # the outcome is in the file, for every later view
    assert saved.tree.turn_outcome().note == "stopped after 3 attempts without printing a value"


def test_an_answer_is_stored_as_answered_and_the_shown_branch_is_the_active_one(tmp_path):
    backend = ScriptedBackend([code("print(undefined_name)"), code("print(6 * 7)")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        assert chat("What is 6 * 7?") == "42"
        assert chat.last_outcome.status == "answered"
        [branch] = chat.branches()
        assert branch.active and branch.last == "42" and branch.set_aside == 1


def test_a_figure_is_a_result(tmp_path):
    plot = ("import matplotlib.pyplot as plt\nimport numpy as np\n"
            "x = np.linspace(0, 6, 50)\nplt.plot(x, np.sin(x))")  # the repr of the lines it returns is shown too
    backend = ScriptedBackend([code(plot)], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        answer = chat("Plot sin(x)")
    assert answer.startswith("[figure: ") and answer.endswith(".png]")


def test_a_value_printed_again_from_an_earlier_turn_is_not_this_turns_answer(tmp_path):
    backend = ScriptedBackend([code("print(5 * 12)"), code("print(3 + 4)\nprint(5 * 12)")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        assert chat("What is 5 * 12?") == "60"
        assert chat("What is 3 + 4?") == "7"


def test_the_same_number_can_still_be_the_answer_twice(tmp_path):
    backend = ScriptedBackend([code("print(2 + 2)"), code("print(4 * 1)")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        assert chat("What is 2 + 2?") == "4"
        assert chat("What is 4 * 1?") == "4"

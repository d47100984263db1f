"""Every small-model attempt runs its cells on its branch (real kernels, a scripted model)."""

from agent import Chat
from agent.core.backend import Capabilities
from agent.models.scripted import ScriptedBackend

SMALL = Capabilities(tools=False, streaming=False)


def code(text: str) -> str:
    return f"```python\n{text}\n```"


def test_an_attempt_does_not_see_an_earlier_attempts_variables(tmp_path):
    backend = ScriptedBackend([code("junk = 1"), code("print('junk' in globals())")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        assert chat("Is there junk?") == "False"


def test_after_load_a_later_attempt_has_the_branchs_variables(tmp_path):
    path = tmp_path / "conv.json"
    with Chat(backend=ScriptedBackend([code("x = 5\nprint(x)")], capabilities=SMALL), workspace=tmp_path,
              progress=False, path=path) as chat:
        assert chat("Set x to 5") == "5"
    backend = ScriptedBackend(["x is five.", code("print(x + 1)")], capabilities=SMALL)  # attempt 1: no code
    with Chat.load(path, backend=backend, workspace=tmp_path, progress=False, trust_cells=True) as chat:
        assert chat("What is x + 1?") == "6"

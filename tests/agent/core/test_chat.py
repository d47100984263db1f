"""The loop, the conversation tree and persistence, with a scripted model and real kernels."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import Budget, BudgetExceeded, Chat
from agent.core.backend import Capabilities
from agent.models.scripted import ScriptedBackend, python_call
from agent.core.events import ToolCallEvent, ToolOutputEvent, ToolResultEvent
from agent.core.messages import Message, ToolCall

REPO = Path(__file__).resolve().parents[3]


def last_user(messages):
    return [m for m in messages if m.role == "user"][-1].content


def by_prompt(table):
    """A scripted model that answers by the last prompt: code first, then a final sentence."""
    def reply(messages):
        if messages[-1].role == "tool":
            return f"done: {messages[-1].content}"
        return python_call(table[last_user(messages)])
    return reply


def test_question_to_code_to_answer(tmp_path):
    backend = ScriptedBackend([python_call("x = 2**100\nprint(x)"), "The answer is 1267650600228229401496703205376."])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events = list(chat.run("What is 2**100?"))
        kinds = [e.kind for e in events]
        assert kinds[0] == "usage" and kinds[-1] == "answer"
        call = next(e for e in events if isinstance(e, ToolCallEvent))
        assert call.code == "x = 2**100\nprint(x)"
        assert any(isinstance(e, ToolOutputEvent) and "1267650600228229401496703205376" in e.text for e in events)
        result = next(e for e in events if isinstance(e, ToolResultEvent))
        assert result.status == "ok" and result.output == "1267650600228229401496703205376"
        assert events[-1].text == "The answer is 1267650600228229401496703205376." and events[-1].steps == 2
        sent = backend.requests[1]
        assert [m.role for m in sent] == ["system", "user", "assistant", "tool"]
        assert sent[-1].tool_call_id == sent[-2].tool_calls[0].id
        assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0


def bad_calls():
    return Message(role="assistant", tool_calls=[
        ToolCall(id="c1", name="python", arguments='{"code": "print(1)"'),   # malformed JSON
        ToolCall(id="c2", name="shell", arguments='{"cmd": "ls"}'),          # unknown tool
        ToolCall(id="c3", name="add", arguments='{"a": "one", "b": 2}'),      # wrong type
        ToolCall(id="c4", name="add", arguments='{"a": 40, "b": 2}'),         # fine
    ])


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_bad_calls_become_errors_the_model_can_act_on(tmp_path):
    backend = ScriptedBackend([bad_calls(), "ok"])
    with Chat(backend=backend, tools=[add], workspace=tmp_path) as chat:
        assert chat("go") == "ok"
        results = [m for m in backend.requests[1] if m.role == "tool"]
        assert [m.tool_call_id for m in results] == ["c1", "c2", "c3", "c4"]
        assert "not valid JSON" in results[0].content
        assert "no tool named 'shell'" in results[1].content and "add, python" in results[1].content
        assert "wrong arguments for add: a: Input should be a valid integer" in results[2].content
        assert results[3].content == "42"
        schemas = [s["function"]["name"] for s in chat.tool_schemas()]
        assert schemas == ["python", "add"]


def test_approval_hook_can_reject_or_edit(tmp_path):
    seen = []

    def approve(code):
        seen.append(code)
        return False if "rm" in code else "print('edited')"

    backend = ScriptedBackend([python_call("import os; os.system('rm -rf x')"), "stopped",
                               python_call("print('original')"), "fine"])
    with Chat(backend=backend, approve=approve, workspace=tmp_path) as chat:
        chat("first")
        assert "did not allow this code to run" in backend.requests[1][-1].content
        chat("second")
        assert backend.requests[3][-1].content == "edited"
        assert len(seen) == 2


def test_max_steps_stops_the_loop(tmp_path):
    backend = ScriptedBackend([python_call("1"), python_call("2"), python_call("3")])
    with Chat(backend=backend, max_steps=2, workspace=tmp_path) as chat:
        answer = chat("loop forever")
        assert "stopped after 2 steps" in answer and len(backend.requests) == 2


def test_budget_stops_before_sending_and_file_stays_valid(tmp_path):
    backend = ScriptedBackend([python_call("1"), "never sent"])
    path = tmp_path / "conv.json"
    with Chat(backend=backend, budget=Budget(max_steps=1), workspace=tmp_path, path=path) as chat:
        with pytest.raises(BudgetExceeded, match="step budget"):
            chat("go")
        assert len(backend.requests) == 1
    assert Chat.load(path, backend=ScriptedBackend([])).tree.leaf is not None


def test_edit_opens_a_branch_and_the_kernel_follows(tmp_path):
    table = {"define a": "only_on_a = 'A'\nshared = 1", "define b": "only_on_b = 'B'"}
    backend = ScriptedBackend([by_prompt(table)] * 20)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat("define a")
        first_branch = chat.tree.leaf
        chat.edit(0, "define b")
        k = chat.kernel()
        assert k.execute("only_on_b").result == "'B'"
        assert k.execute("only_on_a").error_name == "NameError"  # the abandoned branch is gone
        branches = chat.branches()
        assert len(branches) == 2 and [b.active for b in branches] == [False, True]
        assert branches[0].prompts == ["define a"] and branches[1].prompts == ["define b"]
        chat.switch(first_branch)
        assert k.execute("only_on_a, shared").result == "('A', 1)"  # replayed
        assert k.execute("only_on_b").error_name == "NameError"


def test_edit_of_a_later_prompt_keeps_the_earlier_state(tmp_path):
    table = {"one": "kept = 1", "two": "later = 2", "two, edited": "edited = 3"}
    backend = ScriptedBackend([by_prompt(table)] * 20)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat("one")
        chat("two")
        chat.edit(1, "two, edited")
        k = chat.kernel()
        assert k.execute("kept, edited").result == "(1, 3)"
        assert k.execute("later").error_name == "NameError"


def test_undo_and_retry(tmp_path):
    table = {"one": "a = 1", "two": "b = 2"}
    backend = ScriptedBackend([by_prompt(table)] * 20)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat("one")
        chat("two")
        chat.undo()
        assert [m.content for m in chat.messages() if m.role == "user"] == ["one"]
        assert chat.kernel().execute("b").error_name == "NameError"
        before = len(chat.tree.nodes)
        chat.retry()
        user = chat.tree.user_node(-1)
        assert len(chat.tree.children(user.id)) == 2  # the old answer and its sibling
        assert len(chat.tree.nodes) > before
        assert chat.kernel().execute("a").result == "1"


@pytest.mark.parametrize("mode", ["keep", "reset"])
def test_keep_and_reset_modes(tmp_path, mode):
    table = {"a": "x = 1", "b": "y = 2"}
    backend = ScriptedBackend([by_prompt(table)] * 20)
    with Chat(backend=backend, workspace=tmp_path, sync=mode) as chat:
        chat("a")
        events = list(chat.edit_events(0, "b"))
        assert any(e.kind == "notice" and mode in e.text for e in events)
        x = chat.kernel().execute("x")
        assert (x.result == "1") if mode == "keep" else (x.error_name == "NameError")


def test_persistence_and_resume_replays_into_a_fresh_kernel(tmp_path):
    path = tmp_path / "c.json"
    backend = ScriptedBackend([python_call("secret = 6 * 7\nimport matplotlib.pyplot as plt\n"
                                           "plt.plot([1, 3, 2]); plt.show()"), "made a plot"])
    (tmp_path / "ws1").mkdir()
    with Chat(backend=backend, workspace=tmp_path / "ws1", path=path) as chat:
        chat("plot")
        assert json.loads(path.read_text())["tree"]["leaf"] == chat.tree.leaf
    resumed = Chat.load(path, backend=ScriptedBackend([]), workspace=None, trust_cells=True)  # our own file
    try:
        assert resumed.kernel().execute("secret").result == "42"
        md = resumed.export("md", tmp_path / "c.md").read_text()
        assert "```python" in md and "made a plot" in md and "](c_files/figure-1.png)" in md
        page = resumed.export("html", tmp_path / "c.html").read_text()
        assert "data:image/png;base64," in page and "made a plot" in page
    finally:
        resumed.close()


def test_load_rejects_what_is_not_a_conversation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        Chat.load(bad, backend=ScriptedBackend([]))
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a kernelchat conversation"):
        Chat.load(bad, backend=ScriptedBackend([]))


KILL_SCRIPT = """
import sys; sys.path.insert(0, {root!r})
from agent import Chat
from agent.models.scripted import ScriptedBackend, python_call
b = ScriptedBackend([python_call("print('started', flush=True)\\nimport time; time.sleep(60)"), "never"])
chat = Chat(backend=b, path={path!r}, workspace={ws!r})
chat("long job", on_event=lambda e: print(e.kind, flush=True))
"""


def test_kill_9_mid_run_loses_at_most_the_message_in_flight(tmp_path):
    path, ws = tmp_path / "c.json", tmp_path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=str(REPO), path=str(path), ws=str(ws))],
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("tool_output"):
            break
    proc.kill()
    proc.wait()
    chat = Chat.load(path, backend=ScriptedBackend([]))
    msgs = chat.messages()
    # the call is saved; only its result was in flight, and loading answers it as interrupted
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[-1].tool_call_id == msgs[-2].tool_calls[0].id and msgs[-1].content.startswith("[interrupted")
    assert not list(tmp_path.glob(".c.json.*.tmp"))


def test_async_form_runs_chats_concurrently(tmp_path):
    async def main():
        for i in range(2):
            (tmp_path / str(i)).mkdir()
        chats = [Chat(backend=ScriptedBackend([python_call(f"print({i} * 2)"), f"answer {i}"]),
                      workspace=tmp_path / str(i)) for i in range(2)]
        try:
            return await asyncio.gather(*(c.acall("go") for c in chats))
        finally:
            for c in chats:
                c.close()

    assert asyncio.run(main()) == ["answer 0", "answer 1"]


def test_fenced_code_from_a_model_without_tools_runs_and_its_output_answers(tmp_path):
    backend = ScriptedBackend(["Let me compute.\n```python\nprint(2**100)\n```\nThis prints 255."],
                              capabilities=Capabilities(tools=False, streaming=False))
    with Chat(backend=backend, workspace=tmp_path, answer_from_output=True) as chat:
        chat.attempts = 1  # no second attempt to confirm the value
        assert chat("What is 2**100?") == "1267650600228229401496703205376"
        assert len(backend.requests) == 1
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant"]


def test_repair_step_shows_the_traceback_and_the_fix_answers(tmp_path):
    backend = ScriptedBackend(["```python\nprint(totl)\n```", "```python\ntotal = 6 * 7\nprint(total)\n```",
                               "It is 42."])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is 6 times 7?") == "It is 42."
        tool_msg = backend.requests[1][-1]
        assert tool_msg.role == "tool" and "NameError" in tool_msg.content and "totl" in tool_msg.content


def test_old_tool_outputs_are_elided_to_fit_the_context_window(tmp_path):
    backend = ScriptedBackend([python_call("print('a' * 3000)"), python_call("print('b' * 3000)"),
                               python_call("print('c' * 100)"), "done"])
    backend.context_window = 2000  # tokens, ~4 characters each in the scripted count
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("fill the context") == "done"
        last = backend.requests[-1]
        tool_texts = [m.content for m in last if m.role == "tool"]
        assert tool_texts[0].startswith("[elided: 3,000 characters of old tool output")
        assert tool_texts[-1] == "c" * 100
        # the conversation itself keeps everything; only what is sent is elided
        assert [m.content for m in chat.messages() if m.role == "tool"][0] == "a" * 3000


def test_a_cell_threads_event_loop_is_closed_when_it_ends(tmp_path):
    """jupyter_client leaves an asyncio loop in each thread that runs a cell; left to the garbage
    collector at exit it printed `Exception ignored ... Invalid file descriptor: -1`."""
    import threading

    from jupyter_core.utils import ensure_event_loop

    from tools.python_tool import close_thread_loop

    loops = []

    def cell_thread():
        loops.append(ensure_event_loop())  # as jupyter_client's blocking calls do
        close_thread_loop()
        close_thread_loop()  # a thread without a loop: nothing to do

    t = threading.Thread(target=cell_thread)
    t.start()
    t.join()
    assert loops[0].is_closed()

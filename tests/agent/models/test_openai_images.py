"""Images of tool results reach a model that takes them: a cell's figures and an MCP server's
images, after the run of tool results, at low detail, counted in the request's tokens."""

import base64
import json

from agent.core.messages import Figure, Message, ToolCall, tool_result
from agent.models.openai_backend import IMAGE_TOKENS, MAX_IMAGES_SENT, OpenAIBackend

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def turn(n_images: int, call_ids=("a", "b")) -> list[Message]:
    calls = [ToolCall(id=c, name="python", arguments=json.dumps({"code": "plot()"})) for c in call_ids]
    results = [tool_result(c, "[image saved: fig.png]", "python",
                           images=[Figure(mime="image/png", data=PNG)] * (n_images if i == 0 else 0))
               for i, c in enumerate(call_ids)]
    return [Message(role="system", content="s"), Message(role="user", content="plot"),
            Message(role="assistant", tool_calls=calls), *results]


def test_a_vision_model_gets_the_images_after_the_tool_results_and_pays_for_them():
    backend = OpenAIBackend("gpt-4o-mini", api_key="sk-test")
    assert backend.capabilities.images
    wire = backend._request(turn(1), None, None, None)["messages"]
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "tool", "tool", "user"]
    part = wire[-1]["content"][1]
    assert part["image_url"] == {"url": f"data:image/png;base64,{PNG}", "detail": "low"}
    plain = OpenAIBackend("gpt-4o-mini", api_key="sk-test", images=False)
    assert backend.count_prompt_tokens(turn(1)) == plain.count_prompt_tokens(turn(1)) + IMAGE_TOKENS


def test_only_the_latest_images_are_sent_and_a_text_model_gets_none():
    backend = OpenAIBackend("gpt-4.1", api_key="sk-test")
    wire = backend._request(turn(MAX_IMAGES_SENT + 3), None, None, None)["messages"]
    assert len(wire[-1]["content"]) == 1 + MAX_IMAGES_SENT
    for model, base in (("o3-mini", None), ("qwen", "http://127.0.0.1:9/v1")):
        other = OpenAIBackend(model, api_key="sk-test", base_url=base)
        assert not other.capabilities.images
        assert [m["role"] for m in other._request(turn(1), None, None, None)["messages"]][-1] == "tool"
    served = OpenAIBackend("llava", api_key="x", base_url="http://127.0.0.1:9/v1", images=True)
    assert served._request(turn(1), None, None, None)["messages"][-1]["role"] == "user"


def test_a_cells_figures_ride_on_its_result_message(tmp_path):
    from agent import Chat
    from agent.models.scripted import ScriptedBackend, python_call

    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])"
    with Chat(backend=ScriptedBackend([python_call(code), "a line"]), workspace=tmp_path, progress=False) as chat:
        chat("plot")
        [result] = [m for m in chat.messages() if m.role == "tool"]
        assert result.images and result.images[0].mime == "image/png"
        assert base64.b64decode(result.images[0].data).startswith(b"\x89PNG")
        # the file keeps them once, in the cell's record, not on the message as well
        stored = [n.message for n in chat.tree.nodes.values() if n.message.role == "tool"]
        assert stored[0].images == []


def test_a_servers_model_that_takes_images_is_declared_through_get_backend():
    from agent.models import get_backend

    url = "http://127.0.0.1:9/v1"
    assert get_backend("openai:qwen2.5-vl", base_url=url, api_key="x", images=True).capabilities.images
    assert not get_backend("openai:qwen2.5-vl", base_url=url, api_key="x").capabilities.images
    assert not get_backend("gpt-4o", api_key="x", images=False).capabilities.images

"""OpenAIBackend against a real OpenAI-compatible server (`transformers serve`), plus a tiny in-test
HTTP server used only for faults a real server will not produce on demand."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import openai
import pytest

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.messages import Done, Message, TextDelta
from agent.models.openai_backend import OpenAIBackend, retry_after_seconds
from agent.models.pricing import cost_usd

PY_TOOL = [{"type": "function", "function": {
    "name": "python", "description": "Run Python code in a persistent Jupyter kernel.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "the code"}},
                   "required": ["code"]}}}]
CONVO = [Message(role="system", content="You are a terse assistant."), Message(role="user", content="Say hello.")]


# -- the real server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(openai_server):
    """(base_url, model id) of the real server."""
    client = openai.OpenAI(base_url=openai_server, api_key="unused", max_retries=0, timeout=10)
    return openai_server, client.models.list().data[0].id


@pytest.mark.slow
def test_real_server_complete_and_stream(served, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a custom server needs no key
    base_url, model = served
    b = OpenAIBackend(model, base_url=base_url, timeout=60)
    assert isinstance(b, Backend) and b.capabilities == Capabilities(tools=True, streaming=True)
    assert b.client.max_retries == 0  # tenacity is the only retry layer

    r = b.complete(CONVO, PY_TOOL, max_tokens=8, temperature=0)
    assert r.message.role == "assistant" and r.message.content
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.estimated_prompt_tokens == b.count_prompt_tokens(CONVO, PY_TOOL)
    assert r.usage.cost_usd == 0.0 and r.usage.seconds > 0
    assert r.finish_reason in ("length", "stop")

    events = list(b.stream(CONVO, max_tokens=8, temperature=0))
    done = events[-1]
    assert isinstance(done, Done) and all(isinstance(e, TextDelta) for e in events[:-1])
    assert "".join(e.text for e in events[:-1]) == done.reply.message.content
    # usage reported in the stream (include_usage) is the server's own count, not our fallback
    plain = b.client.chat.completions.create(model=model, messages=[m.to_openai() for m in CONVO], max_tokens=1)
    assert done.reply.usage.prompt_tokens == plain.usage.prompt_tokens
    assert 0 < done.reply.usage.completion_tokens <= 8


@pytest.mark.slow
def test_real_server_errors_and_models_command(served, capsys):
    from agent.frontends.cli import main

    base_url, model = served
    with pytest.raises(BackendError, match="rejected the request|unknown model"):
        OpenAIBackend("no-such-model", base_url=base_url).complete(CONVO, max_tokens=1)
    assert main(["models", "--base-url", base_url]) == 0
    assert model in capsys.readouterr().out


def test_unreachable_server_names_the_url():
    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_initial=0.01)
    with pytest.raises(BackendError, match=r"cannot reach the server at http://127.0.0.1:9/v1 after 2 attempts"):
        b.complete(CONVO)


def test_missing_key_only_matters_for_openai(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match="no API key: set OPENAI_API_KEY or pass --api-key"):
        OpenAIBackend("gpt-4o-mini")
    assert OpenAIBackend("m", base_url="http://localhost:1234/v1").client.api_key == "not-needed"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:5678/v1")
    assert OpenAIBackend("m").base_url == "http://localhost:5678/v1"


def test_request_shape_for_openai_and_others():
    real = OpenAIBackend("openai:o4-mini", base_url="https://api.openai.com/v1", api_key="sk-test")
    req = real._request(CONVO, PY_TOOL, 100, None)
    assert req["model"] == "o4-mini" and req["max_completion_tokens"] == 100 and "temperature" not in req
    assert real.context_window == 200_000
    other = OpenAIBackend("x", base_url="http://localhost:1/v1")
    assert other._request(CONVO, None, 5, 0.2) == {"model": "x", "messages": [m.to_openai() for m in CONVO],
                                                   "max_tokens": 5, "temperature": 0.2}


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    in_5s = formatdate(time.time() + 5, usegmt=True)
    assert 3.5 < retry_after_seconds({"retry-after": in_5s}) <= 5.0
    assert retry_after_seconds({}) is None
    # nonsense gives way to the usual backoff (None), never an exception out of the retry loop
    for bad in ("-5", "nan", "inf", "-inf", "soon", "", formatdate(time.time() - 60, usegmt=True),
                "Mon, 99 Foo 2024 99:99:99 GMT", "1e999"):
        assert retry_after_seconds({"retry-after": bad}) is None, bad
    assert retry_after_seconds({"retry-after-ms": "-200", "retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "nan"}) is None
    assert retry_after_seconds({"retry-after": "1e9"}) == 1e9  # honoured only up to RETRY_AFTER_CAP


# -- fault injection: a scripted HTTP server ------------------------------------------------------

Step = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


class FaultServer:
    """Answers each POST with the next scripted step and records the request bodies."""

    def __init__(self, steps: list[Step]):
        self.steps, self.requests = list(steps), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.steps.pop(0)(self, body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_server():
    servers: list[FaultServer] = []

    def make(*steps: Step) -> FaultServer:
        servers.append(FaultServer(list(steps)))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def send_json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Step:
    def step(h: BaseHTTPRequestHandler, _req: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
    return step


def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> Step:
    return send_json(status, {"error": {"message": message, "type": "error", "code": code}}, headers)


def sse(chunks: list[dict[str, Any]], cut: bool = False) -> Step:
    """Stream chunks with chunked encoding; with cut=True the connection drops before the end."""
    def step(h: BaseHTTPRequestHandler, _req: dict[str, Any]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ([] if cut else ["data: [DONE]\n\n"])
        for ev in events:
            data = ev.encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()
        if cut:
            h.wfile.write(b"40\r\ndata: {\"trunc")  # half a chunk, then the connection drops
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(b"0\r\n\r\n")
    return step


def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}


def completion(message: dict[str, Any], usage: dict[str, Any] | None = None, finish: str = "stop") -> Step:
    """A whole reply streamed in one chunk, its usage in a last chunk of its own (as OpenAI does)."""
    delta = {**message, "tool_calls": [{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or [])]}
    usage_chunk = {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                   "usage": usage or {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
    return sse([chunk(delta, finish), usage_chunk])


def backend(url: str, model: str = "gpt-4o", **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=url, api_key="sk-test", backoff_initial=0.01, backoff_max=0.05, **kw)


def test_429_honours_retry_after_then_succeeds(fault_server):
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
             "prompt_tokens_details": {"cached_tokens": 400}, "completion_tokens_details": {"reasoning_tokens": 50}}
    srv = fault_server(error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "1"}),
                       error(429, "Rate limit reached", "rate_limit_exceeded", {"retry-after-ms": "200"}),
                       completion({"role": "assistant", "content": "hi"}, usage))
    start = time.monotonic()
    r = backend(srv.url).complete(CONVO)
    assert time.monotonic() - start >= 1.2  # waited what the server asked, not the 0.01 s backoff
    assert len(srv.requests) == 3 and r.message.content == "hi"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens) == (1000, 200, 400, 50)
    assert u.cost_usd == pytest.approx(cost_usd("gpt-4o", 1000, 200, 400))
    assert u.cost_usd == pytest.approx((600 * 2.5 + 400 * 1.25 + 200 * 10) / 1e6)


def test_nonsense_retry_after_falls_back_to_the_backoff(fault_server):
    past = formatdate(time.time() - 3600, usegmt=True)
    srv = fault_server(*[error(429, "slow down", "rate_limit_exceeded", {"Retry-After": v})
                         for v in ("-5", "nan", "soon", past)],
                       completion({"role": "assistant", "content": "hi"}))
    start = time.monotonic()
    r = backend(srv.url).complete(CONVO)
    assert r.message.content == "hi" and len(srv.requests) == 5
    assert time.monotonic() - start < 3  # the 0.01 to 0.05 s backoff, not a wait the header made up


def test_a_huge_retry_after_is_capped(fault_server, monkeypatch):
    from agent.models import openai_backend

    monkeypatch.setattr(openai_backend, "RETRY_AFTER_CAP", 0.5)
    srv = fault_server(error(429, "come back next year", "rate_limit_exceeded", {"Retry-After": "1e9"}),
                       completion({"role": "assistant", "content": "hi"}))
    start = time.monotonic()
    assert backend(srv.url).complete(CONVO).message.content == "hi"
    assert 0.5 <= time.monotonic() - start < 3


@pytest.mark.parametrize("reported,expected", [
    ({"prompt_tokens": -5, "completion_tokens": -1}, (0, 0)),
    ({"prompt_tokens": "many", "completion_tokens": 2.5}, ("estimate", "own")),
    ({"prompt_tokens": 10**30, "completion_tokens": True}, ("estimate", "own")),
    ({"prompt_tokens": 12.0, "completion_tokens": 5000}, (12, 5000)),  # billed above max_tokens: as billed
], ids=["negative", "not numbers", "absurd", "more than asked"])
def test_usage_the_server_reports_is_sanitised(fault_server, caplog, reported, expected):
    srv = fault_server(completion({"role": "assistant", "content": "Hello there"}, reported))
    b = backend(srv.url)
    u = b.complete(CONVO, max_tokens=10).usage
    own = {"estimate": b.count_prompt_tokens(CONVO), "own": 2}  # our counts: the prompt, "Hello there"
    assert (u.prompt_tokens, u.completion_tokens) == tuple(own.get(e, e) for e in expected)
    assert u.cost_usd == pytest.approx(cost_usd("gpt-4o", u.prompt_tokens, u.completion_tokens))
    if expected != (12, 5000):
        assert "the server reported usage" in caplog.text


def test_a_server_that_bills_more_than_asked_stops_the_token_budget_cleanly(fault_server, tmp_path):
    from agent import Budget, BudgetExceeded, Chat
    from agent.core.events import NoticeEvent

    srv = fault_server(sse([chunk({"role": "assistant", "content": "hi"}, finish="stop",
                                  usage={"prompt_tokens": 30, "completion_tokens": 5000, "total_tokens": 5030})]))
    with Chat(backend=backend(srv.url), budget=Budget(max_tokens=1000), workspace=tmp_path) as chat:
        events = list(chat.run("hello"))
        assert events[-1].text == "hi"
        assert any(isinstance(e, NoticeEvent) and "reported 5,000 completion tokens" in e.text for e in events)
        assert srv.requests[0]["max_tokens"] < 1000
        with pytest.raises(BudgetExceeded, match=r"token budget.*only 0 of 1,000 remain \(5,030 spent\)"):
            chat("again")
    assert len(srv.requests) == 1  # nothing more was sent


def test_repeated_500s_give_up(fault_server):
    srv = fault_server(*[error(500, "The server had an error")] * 3)
    with pytest.raises(BackendError, match=r"failed with HTTP 500 after 3 attempts: The server had an error"):
        backend(srv.url, max_retries=2).complete(CONVO)
    assert len(srv.requests) == 3


@pytest.mark.parametrize("status,code,pattern", [
    (401, "invalid_api_key", r"API key was rejected by .* \(401\)"),
    (403, None, r"access denied by .* \(403\)"),
    (404, "model_not_found", r"unknown model 'gpt-4o' at .*kernelchat models"),
    (400, None, r"rejected the request \(HTTP 400\): bad thing"),
    (429, "insufficient_quota", r"quota .* is exhausted"),
])
def test_errors_not_retried(fault_server, status, code, pattern):
    # A 400 is first taken for a server that refuses stream_options: asked once more without them.
    asked = 2 if status == 400 else 1
    srv = fault_server(*[error(status, "bad thing", code)] * asked, completion({"role": "assistant", "content": "x"}))
    with pytest.raises(BackendError, match=pattern):
        backend(srv.url).complete(CONVO)
    assert len(srv.requests) == asked and ("stream_options" in srv.requests[-1]) == (asked == 1)


def test_timeout_is_retried_then_reported(fault_server):
    def slow(h, _req):
        time.sleep(1.0)
    srv = fault_server(slow, slow)
    with pytest.raises(BackendError, match=r"no answer from .* within 0.3 s after 2 attempts"):
        backend(srv.url, timeout=0.3, max_retries=1).complete(CONVO)


def test_parallel_tool_calls_with_malformed_arguments(fault_server):
    calls = [{"id": "a", "type": "function", "function": {"name": "python", "arguments": '{"code": "1+1"}'}},
             {"id": "b", "type": "function", "function": {"name": "python", "arguments": '{"code": "print(2'}}]
    srv = fault_server(completion({"role": "assistant", "content": None, "tool_calls": calls}, finish="tool_calls"))
    r = backend(srv.url).complete(CONVO, PY_TOOL)
    assert srv.requests[0]["tools"] == PY_TOOL
    assert [c.id for c in r.message.tool_calls] == ["a", "b"] and r.finish_reason == "tool_calls"
    assert r.message.tool_calls[0].parsed_arguments() == {"code": "1+1"}
    with pytest.raises(ValueError, match="not valid JSON"):
        r.message.tool_calls[1].parsed_arguments()


def test_streamed_parallel_tool_calls(fault_server):
    tc = lambda i, **f: {"tool_calls": [{"index": i, **({"id": f.pop("id")} if "id" in f else {}),  # noqa: E731
                                          "type": "function", "function": f}]}
    srv = fault_server(sse([
        chunk({"role": "assistant", "content": "Let me run it."}),
        chunk(tc(0, id="c0", name="python", arguments='{"co')),
        chunk(tc(1, id="c1", name="python", arguments='{"code": "2"}')),
        chunk(tc(0, arguments='de": "1"}')),
        chunk({}, finish="tool_calls"),
        {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}},
    ]))
    events = list(backend(srv.url).stream(CONVO, PY_TOOL))
    assert srv.requests[0]["stream_options"] == {"include_usage": True}
    assert [type(e) for e in events] == [TextDelta, Done]  # tool calls arrive whole, in the reply
    reply = events[-1].reply
    assert reply.message.content == "Let me run it."
    assert [(c.id, c.parsed_arguments()) for c in reply.message.tool_calls] == [("c0", {"code": "1"}),
                                                                                ("c1", {"code": "2"})]
    assert reply.usage.prompt_tokens == 50 and reply.usage.completion_tokens == 20


def test_stream_cut_midway(fault_server):
    srv = fault_server(sse([chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"})], cut=True))
    got = []
    with pytest.raises(BackendError, match=r"stream from .* was cut off mid-way after 2 chunks"):
        for e in backend(srv.url).stream(CONVO):
            got.append(e)
    assert [e.text for e in got] == ["Hel", "lo"]


def test_stream_without_usage_support_falls_back(fault_server):
    srv = fault_server(error(400, "Unrecognized request argument supplied: stream_options"),
                       sse([chunk({"role": "assistant", "content": "Hello there"}, finish="stop")]))
    b = backend(srv.url, model="some-local-model")
    reply = list(b.stream(CONVO))[-1].reply
    assert "stream_options" in srv.requests[0] and "stream_options" not in srv.requests[1]
    assert reply.usage.prompt_tokens == reply.usage.estimated_prompt_tokens == b.count_prompt_tokens(CONVO)
    assert reply.usage.completion_tokens == 2  # our own count of "Hello there"
    assert reply.usage.cost_usd == 0.0

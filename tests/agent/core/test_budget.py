"""Budgets, context-window fitting and the price table."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.models import pricing, tokens
from agent.core.budget import Budget, BudgetExceeded, BudgetTracker, ContextOverflow, elision_marker, fit_context
from agent.frontends.cli import main

from agent.core.messages import Message, ToolCall, Usage, tool_result


def system(text: str) -> Message:
    return Message(role="system", content=text)


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str | None, tool_calls: list[ToolCall] = ()) -> Message:
    return Message(role="assistant", content=text, tool_calls=list(tool_calls))


def test_token_budget_clips_then_refuses():
    t = BudgetTracker(budget=Budget(max_tokens=1000))
    assert t.check(300, 512) == 512  # fits entirely
    t.record(Usage(prompt_tokens=500, completion_tokens=100))
    assert t.check(300, 512) == 100  # 400 remain: the completion is clipped
    with pytest.raises(BudgetExceeded, match=r"token budget.*390 prompt tokens.*only 400 of 1,000 remain.*600 spent"):
        t.check(390, 512)  # 390 + the 16-token minimum answer would cross it
    assert t.check(390, 10, min_completion=1) == 10


def test_budget_is_never_overshot_by_more_than_the_drift():
    t = BudgetTracker(budget=Budget(max_tokens=5200))
    allowed = []
    with pytest.raises(BudgetExceeded):
        while True:
            allowed.append(t.check(100, 400))
            t.record(Usage(prompt_tokens=100, completion_tokens=allowed[-1]))  # the server used all it was allowed
    assert allowed == [400] * 10 + [100]  # the last completion was clipped to what remained
    assert t.spent.total_tokens == 5200


def test_money_budget_clips_by_price():
    price = pricing.lookup("gpt-4o")  # $2.50 in, $10 out per 1M
    t = BudgetTracker(budget=Budget(max_usd=0.01), price=price, model="gpt-4o")
    # 2,000 prompt tokens cost $0.005; $0.005 left buys 500 output tokens
    assert t.check(2000, 4096) == 500
    t.record(Usage(prompt_tokens=2000, completion_tokens=500, cost_usd=0.01))
    with pytest.raises(BudgetExceeded, match=r"money budget.*only \$0.0000 of \$0.01 remain"):
        t.check(10, 100)
    # a local model costs nothing: any max_usd holds
    free = BudgetTracker(budget=Budget(max_usd=0.01), price=pricing.lookup("hf:smollm2"), model="hf:smollm2")
    assert free.check(10**6, 100) == 100


def test_money_budget_needs_a_price(tmp_path, monkeypatch):
    """max_usd for a model without a price was silently unenforced: now it is refused at once,
    with the way to give a price, whether set at the start, by a switch of model, or later."""
    monkeypatch.setenv("KERNELCHAT_PRICES", str(tmp_path / "prices.json"))
    with pytest.raises(ValueError, match=r"max_usd needs the price of 'my-llama'.*prices.json.*"
                                         r'"my-llama": \{"input": USD, "output": USD\}.*or drop max_usd'):
        BudgetTracker(budget=Budget(max_usd=1), price=None, model="my-llama", price_help=pricing.price_help("my-llama"))
    t = BudgetTracker(budget=Budget(max_usd=1), price=pricing.lookup("gpt-4o"), model="gpt-4o")
    with pytest.raises(ValueError, match="max_usd needs the price of 'my-llama'"):
        t.set_model("my-llama", pricing.lookup("my-llama"))
    assert t.price == pricing.lookup("gpt-4o")  # refused: nothing changed
    t.budget = Budget(max_tokens=100)  # no money limit: any model will do
    t.set_model("my-llama", None)
    with pytest.raises(ValueError, match="max_usd needs the price"):
        t.budget = Budget(max_usd=0.5)
    assert t.budget.max_usd is None
    # the user's price file is the way out; a model file on this machine costs nothing
    (tmp_path / "prices.json").write_text(json.dumps({"models": {"my-llama": {"input": 0.1, "output": 0.2}}}))
    BudgetTracker(budget=Budget(max_usd=1), price=pricing.lookup("my-llama"), model="my-llama")
    assert pricing.lookup(str(tmp_path)) == pricing.lookup("x.gguf") == pricing.Price()


def test_chat_refuses_max_usd_for_a_model_without_a_price(tmp_path, monkeypatch, capsys):
    from agent import Chat
    from agent.models.openai_backend import OpenAIBackend
    from agent.models.scripted import ScriptedBackend

    monkeypatch.setenv("KERNELCHAT_PRICES", str(tmp_path / "prices.json"))
    unpriced = OpenAIBackend("my-llama", base_url="http://127.0.0.1:9/v1")  # never contacted
    with pytest.raises(ValueError, match="max_usd needs the price of 'my-llama'"):
        Chat(backend=unpriced, budget=Budget(max_usd=0.5), workspace=tmp_path)
    with Chat(backend=ScriptedBackend([], model="gpt-4o-mini"), budget=Budget(max_usd=0.5),
              workspace=tmp_path) as chat:
        with pytest.raises(ValueError, match="max_usd needs the price of 'my-llama'"):
            chat.use_backend(unpriced)
        assert chat.model == "gpt-4o-mini" and chat.price == pricing.lookup("gpt-4o-mini")  # unchanged
        with Chat(backend=unpriced, workspace=tmp_path) as free_run:  # no money limit: fine
            assert free_run.price is None
    assert main(["--model", "my-llama", "--base-url", "http://127.0.0.1:9/v1", "--max-usd", "1", "--no-save",
                 "hi"]) == 2  # one line, before anything is sent
    assert "max_usd needs the price of 'my-llama'" in capsys.readouterr().err


def test_usage_over_what_was_asked_is_counted_and_then_stops():
    """A server billed 5,000 completion tokens for a request capped at 100: counted as billed, and the
    next check refuses cleanly (no negative clip, no crash)."""
    t = BudgetTracker(budget=Budget(max_tokens=1000))
    assert t.check(100, 100) == 100
    t.record(Usage(prompt_tokens=100, completion_tokens=5000))
    with pytest.raises(BudgetExceeded, match=r"only 0 of 1,000 remain \(5,100 spent\)"):
        t.check(10, 100)
    with pytest.raises(ValidationError):
        Usage(prompt_tokens=-1)
    with pytest.raises(ValidationError):
        Usage(cost_usd=float("nan"))


def test_steps_and_seconds(monkeypatch):
    t = BudgetTracker(budget=Budget(max_steps=2, max_seconds=30))
    t.record(Usage())
    t.record(Usage())
    with pytest.raises(BudgetExceeded, match="step budget reached: 2 of 2"):
        t.check(1, 1)
    t2 = BudgetTracker(budget=Budget(max_seconds=0.5))
    monkeypatch.setattr(BudgetTracker, "elapsed", property(lambda self: 1.0))
    with pytest.raises(BudgetExceeded, match="time budget reached"):
        t2.check(1, 1)
    with pytest.raises(ValidationError):
        Budget(max_tokens=-5)
    assert BudgetTracker().check(10**9, 64) == 64  # no limits


def _convo(n_outputs: int, size: int) -> list:
    msgs = [system("You run Python."), user("Analyse the data.")]
    for i in range(n_outputs):
        call = ToolCall(id=f"c{i}", name="python", arguments='{"code": "print(df)"}')
        msgs += [assistant(None, [call]), tool_result(f"c{i}", f"row {i} " * size)]
    return msgs + [assistant("Done.")]


def test_fit_context_elides_oldest_tool_outputs_first():
    count = lambda ms: tokens.count_messages(ms, "gpt-4o")  # noqa: E731
    msgs = _convo(4, 500)  # each output ~1,500 tokens
    assert fit_context(msgs, count, 100_000) is msgs  # fits: untouched
    fitted = fit_context(msgs, count, count(msgs) - 1000, reserve=0)
    assert len(fitted) == len(msgs)  # nothing dropped
    outputs = [m.content for m in fitted if m.role == "tool"]
    assert outputs[0] == elision_marker(len(msgs[3].content)) and "characters of old tool output" in outputs[0]
    assert outputs[1:] == [m.content for m in msgs if m.role == "tool"][1:]  # only as many as needed
    assert count(fitted) <= count(msgs) - 1000
    assert msgs[3].content.startswith("row 0")  # the input list was not modified

    tight = fit_context(msgs, count, count(msgs) - 3500, reserve=0)
    assert [m.content.startswith("[elided") for m in tight if m.role == "tool"] == [True, True, True, False]


def test_fit_context_elides_the_newest_output_when_nothing_else_fits():
    """One huge output (a 2 MB last expression) must not fail this turn and every later one."""
    count = lambda ms: tokens.count_messages(ms, "gpt-4o")  # noqa: E731
    msgs = [system("You run Python."), user("Show it.")]
    call = ToolCall(id="c0", name="python", arguments='{"code": "s"}')
    msgs += [assistant(None, [call]), tool_result("c0", "word " * 20_000)]
    fitted = fit_context(msgs, count, 2000, reserve=500)
    assert fitted[-1].content == elision_marker(100_000, newest=True) and "print less" in fitted[-1].content
    assert fitted[-1].tool_call_id == "c0" and count(fitted) <= 1500
    older = msgs[:2] + [assistant(None, [ToolCall(id="o", name="python", arguments="{}")]),
                        tool_result("o", "old " * 600)] + msgs[2:4] + [tool_result("c0", "small output")]
    kept = fit_context(older, count, count(older) - 100)
    assert kept[3].content.startswith("[elided: 2,400 characters of old") and kept[-1].content == "small output"


def test_fit_context_refuses_clearly():
    count = lambda ms: tokens.count_messages(ms, "gpt-4o")  # noqa: E731
    msgs = _convo(2, 500) + [user("and now this: " + "long prompt " * 1000)]  # no tool output to elide
    with pytest.raises(ContextOverflow, match=r"even with every tool output elided.*context window leaves 1,500"):
        fit_context(msgs, count, 2000, reserve=500)


def test_price_lookup_longest_prefix():
    assert pricing.lookup("gpt-4o-mini-2024-07-18") == pricing.lookup("gpt-4o-mini")
    assert pricing.lookup("gpt-4o-mini").input == 0.15
    assert pricing.lookup("gpt-4o-2024-08-06").input == 2.5
    assert pricing.lookup("gpt-4o-2024-05-13").input == 5.0  # a dated entry beats its family
    assert pricing.lookup("gpt-4.1-nano-2025-04-14").output == 0.4
    assert pricing.lookup("openai:gpt-5-mini").context_window == 400_000
    assert pricing.lookup("hf:anything").input == 0 and pricing.cost_usd("hf:smollm2", 10**6, 10**6) == 0
    assert pricing.lookup("my-llama") is None and pricing.cost_usd("my-llama", 10**6, 10**6) == 0
    # cached tokens are billed at the cached rate; without one (gpt-4-turbo) at the input rate
    assert pricing.cost_usd("gpt-4o", 1_000_000, 0, cached_tokens=1_000_000) == 1.25
    assert pricing.cost_usd("gpt-4-turbo", 1_000_000, 1_000_000, cached_tokens=500_000) == 40.0
    assert pricing.context_window("gpt-4-0613") == 8192 and pricing.context_window("x", 4096) == 4096


def test_user_price_override(tmp_path, monkeypatch):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"models": {"gpt-4o": {"input": 1.0}, "my-llama": {"input": 0.1, "output": 0.2,
                                                                               "context_window": 32000}}}))
    monkeypatch.setenv("KERNELCHAT_PRICES", str(f))
    assert pricing.lookup("gpt-4o").input == 1.0 and pricing.lookup("gpt-4o").output == 10.0  # merged per field
    assert pricing.lookup("my-llama-3-8b").context_window == 32000
    f.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        pricing.lookup("gpt-4o")
    monkeypatch.setenv("KERNELCHAT_PRICES", str(tmp_path / "absent.json"))
    assert pricing.lookup("gpt-4o").input == 2.5


def test_cli_models_json(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"gpt-4o", "gpt-4o-mini", "gpt-5", "o3"} <= set(data["priced"])
    assert data["local"]["hf:smollm2"]["default"] is True and data["server"] is None
    assert main(["models", "--json", "--base-url", "http://127.0.0.1:9/v1", "--timeout", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["error"].startswith("unreachable")

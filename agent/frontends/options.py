"""The command-line options every front end shares, and what they become.

The flag groups (model, budget, sandbox, gateway) are added to a parser here, and parsed flags turn
into what they set here, once: `kernel_options` builds the KernelOptions (the one model of a
kernel's options and their defaults, sandbox/options.py), `chat_options` the Chat keyword arguments
(with that KernelOptions as `kernel=`, one object). A sandbox flag's default is None, "not given":
the configuration file's value then (config.apply makes it the flag's default), else the model's. The one shot, the terminal chat and `kernelchat run` all go through them, so
a flag cannot reach one front end and miss another. `--save` and every flag's value are checked
here too (`check_options`), before a model loads or a kernel starts.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from agent.core.budget import Budget
from agent.core.notebook_import import notebook_cells
from agent.models import ENGINES
from agent.models import KEEP_ALIVE_DEFAULT as KEEP_ALIVE
from sandbox import MAX_MB, KernelOptions


class Arguments(Protocol):
    """A parser or one of its argument groups."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action: ...


# -- the flags -------------------------------------------------------------------------------------


def read_secret(path: str) -> str:
    """The secret held in the file `path`: its first line, stripped. ValueError in one sentence."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(4096).strip()
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path} (it is not UTF-8 text)") from None
    if not first:
        raise ValueError(f"{path} holds no secret on its first line")
    return first


def _secret_from_file(path: str) -> str:
    try:
        return read_secret(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None  # argparse names the flag


class SecretOnCommandLine(argparse.Action):
    """A flag that would take a secret as its value: refused, and the value is not repeated (a
    command line is public: `ps`, /proc, shell history)."""

    def __init__(self, option_strings: list[str], dest: str, *, instead: str) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs="?",
                         help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} takes no value on the command line, where every user of this machine "
                     f"can read it: {self.instead}")


def add_secret_file_arg(p: Arguments, flag: str, env: str, what: str) -> None:
    """`FLAG-file FILE` (the secret is read from FILE at once, into `FLAG`'s destination), and `FLAG`
    itself refused with what to do instead."""
    dest = flag.lstrip("-").replace("-", "_")
    p.add_argument(f"{flag}-file", metavar="FILE", dest=dest, default=None, type=_secret_from_file,
                   help=f"a file whose first line is {what} (default: ${env})")
    p.add_argument(flag, action=SecretOnCommandLine, instead=f"put it in a file and pass {flag}-file FILE, "
                                                               f"or set ${env}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None,
                   help="gpt-4o-mini, openai:NAME, hf:smollm2 (default without OPENAI_API_KEY), hf:ORG/NAME[@REV] "
                        "(downloaded when online), ollama:NAME[:TAG], a folder or a .gguf file")
    g.add_argument("--base-url", default=None, help="an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...)")
    add_secret_file_arg(g, "--api-key", "OPENAI_API_KEY", "the server's API key")
    add_images_arg(g)
    g.add_argument("--system", default=None, help="replace the default system prompt")
    add_keep_alive_arg(g)
    add_engine_arg(g)
    add_constrain_calls_arg(g)


def add_images_arg(p: Arguments) -> None:
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=None,
                   help="the server's model takes images: plots and MCP tools' images are sent to it "
                        "(default: OpenAI's vision models by name; a local model gets text only)")


def add_mcp_arg(p: Arguments) -> None:
    p.add_argument("--mcp", action="append", default=None, metavar="FILE", dest="mcp_files",
                   help="an `mcpServers` JSON file (as Claude Desktop and Cursor write it): its servers' tools are "
                        "offered beside python, as SERVER__TOOL (with config.toml's [mcp_servers]; repeatable)")


def mcp_server_specs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The MCP servers: config.toml's [mcp_servers], then each --mcp file (a name there wins); None: none."""
    from tools.mcp_specs import load_mcp_file, merge_specs

    specs = merge_specs(getattr(args, "mcp_servers", None) or {},
                        *[load_mcp_file(f) for f in getattr(args, "mcp_files", None) or []])
    return specs or None


def add_engine_arg(p: Arguments) -> None:
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="what runs a local model: llama.cpp (GGUF files and ollama: models, where installed), "
                        "transformers, or auto (default; `kernelchat models` says which and why)")


def add_constrain_calls_arg(p: Arguments) -> None:
    p.add_argument("--constrain-calls", action=argparse.BooleanOptionalAction, default=None,
                   help="write a model's tool calls under a grammar of the tools' schemas where the engine can "
                        "(llama.cpp): always valid JSON naming an offered tool (default: the engine's)")


def add_keep_alive_arg(p: Arguments) -> None:
    p.add_argument("--keep-alive", type=float, default=None, metavar="SECONDS",
                   help="keep a local model loaded in the background this long after use, so the next "
                        f"command starts at once (default {KEEP_ALIVE:g}, or $KERNELCHAT_KEEP_ALIVE; 0: load it "
                        "in this process)")


def add_notebook_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--notebook", metavar="PATH", default=None,
                   help="start from a Jupyter notebook: its code cells run first and the model sees them")


def add_budget_args(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("budget")
    b.add_argument("--max-steps", type=int, default=10, help="model requests per prompt (default 10)")
    b.add_argument("--max-tokens", type=int, default=None, help="token budget for the conversation")
    b.add_argument("--max-usd", type=float, default=None, help="money budget in USD")
    b.add_argument("--max-seconds", type=float, default=None, help="time budget")


GATEWAY_HELP = "run the kernel on a Jupyter Kernel Gateway / Enterprise Gateway (implies --isolation gateway)"


def add_gateway_args(p: Arguments, help_text: str = GATEWAY_HELP) -> None:
    p.add_argument("--gateway", metavar="URL", default=None, help=help_text)
    add_secret_file_arg(p, "--gateway-token", "KERNELCHAT_GATEWAY_TOKEN", "the gateway's auth token")


def add_sandbox_args(p: argparse.ArgumentParser, workspace: bool = True) -> None:
    """The sandbox flags (`workspace=False`: all but --workspace, for `run`, where each task has its own)."""
    g = p.add_argument_group("sandbox")
    g.add_argument("--isolation", choices=["bwrap", "none", "gateway"], default=None,
                   help="bwrap (default where it runs), none (trusted code only), or gateway (see --gateway)")
    add_gateway_args(g)
    g.add_argument("--network", action="store_true", default=None, help="let the kernel reach the network")
    g.add_argument("--gpu", action="store_true", default=None, help="pass the NVIDIA devices through")
    if workspace:
        g.add_argument("--workspace", default=None,
                       help="the kernel's working folder, made if missing (default: a temporary one)")
    g.add_argument("--timeout", type=float, default=None,
                   help=f"seconds per cell (default {KernelOptions.model_fields['timeout'].default:g})")
    g.add_argument("--memory-mb", type=int, default=None, help="memory limit for the kernel (default: half the RAM)")
    g.add_argument("--disk-mb", type=int, default=None,
                   help="disk quota for the workspace (default: what it holds plus 25%% of the free space)")


# -- what they become ------------------------------------------------------------------------------


def gateway_options(args: argparse.Namespace) -> dict[str, Any]:
    """KernelOptions fields for --gateway URL / --gateway-token-file (else KERNELCHAT_GATEWAY_URL / _TOKEN)."""
    if getattr(args, "gateway", None) or getattr(args, "isolation", None) == "gateway":
        return {"isolation": "gateway", "gateway_url": args.gateway, "gateway_token": args.gateway_token}
    return {}


# The sandbox flags' destinations that are KernelOptions fields of the same name.
SANDBOX_FIELDS = ("workspace", "isolation", "network", "gpu", "timeout", "memory_mb", "disk_mb")


def kernel_options(args: argparse.Namespace) -> KernelOptions:
    """The kernel's options, built once: the model's defaults < config.toml's [sandbox] (the flags'
    defaults, less what an environment variable overrides) < the environment (KERNELCHAT_GATEWAY_*,
    read by the gateway kernel) < the sandbox flags. Only what was given is set (`model_fields_set`)."""
    given = {name: getattr(args, name, None) for name in SANDBOX_FIELDS}
    return KernelOptions(**{**{k: v for k, v in given.items() if v is not None}, **gateway_options(args)})


def chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """Chat keyword arguments from the model, budget and sandbox flags (progress bars unless --json);
    the kernel's options are one object, `kernel=` (a front end that starts the kernel early passes
    that kernel in their place)."""
    budget = Budget(max_tokens=args.max_tokens, max_usd=args.max_usd, max_seconds=args.max_seconds)
    return dict(**model_choice(args), system=args.system, budget=budget, max_steps=args.max_steps,
                progress=not getattr(args, "json", False), keep_alive=keep_alive(args), engine=getattr(args, "engine", None) or "auto",
                constrain_calls=getattr(args, "constrain_calls", None), mcp_servers=mcp_server_specs(args),
                kernel=kernel_options(args))


def model_choice(args: argparse.Namespace) -> dict[str, Any]:
    """Chat's model, base_url and api_key; with --images/--no-images, the server's backend itself
    (what it takes is the backend's to declare). ValueError: --images for a local model."""
    images = getattr(args, "images", None)
    if images is None:
        return dict(model=args.model, base_url=args.base_url, api_key=args.api_key)
    from agent.models import get_backend

    return dict(backend=get_backend(check_images_option(args), base_url=args.base_url, api_key=args.api_key,
                                    images=images))


def check_images_option(args: argparse.Namespace) -> str | None:
    """The model --images/--no-images applies to; ValueError when it runs here (text only)."""
    from agent.models import default_model, is_local_model

    if getattr(args, "images", None) is None:
        return args.model
    model = args.model or default_model()
    if is_local_model(model) and not args.base_url:
        raise ValueError(f"--images (images = true in config.toml) is for a server's model (--base-url URL, "
                         f"or openai:NAME); {model} runs here and gets text only")
    return model


# -- checked before anything loads ----------------------------------------------------------------


def _positive(flag: str, value: float | None, what: str) -> None:
    """None (not given) or a positive, finite number; else one sentence naming the flag."""
    if value is not None and not (0 < value < math.inf):  # NaN fails this too
        raise ValueError(f"{flag} must be {what} greater than 0, got {value}")


def check_budget_options(args: argparse.Namespace) -> None:
    """The budget flags' values (the Budget model would refuse them too, but later and in pydantic's words)."""
    _positive("--max-steps", args.max_steps, "a whole number")
    _positive("--max-tokens", args.max_tokens, "a whole number")
    _positive("--max-usd", args.max_usd, "an amount in USD")
    _positive("--max-seconds", args.max_seconds, "a number of seconds")


def check_sandbox_options(args: argparse.Namespace) -> None:
    """The sandbox flags' values, then the workspace: made when missing (with its parents), refused
    when it is a file or cannot be made. The workspace comes last, so a bad value makes no folder."""
    _positive("--timeout", args.timeout, "a number of seconds")
    for flag, value in (("--memory-mb", args.memory_mb), ("--disk-mb", args.disk_mb)):
        # None: not given; -1: the default (argparse's type=int refused the rest)
        if value not in (None, -1) and not 0 < value <= MAX_MB:
            raise ValueError(f"{flag} must be a whole number of MB from 1 to {MAX_MB:,}, got {value}")
    if getattr(args, "workspace", None) is not None:
        make_workspace(args.workspace)


def keep_alive(args: argparse.Namespace) -> float:
    """Seconds a local model stays loaded after the command: --keep-alive, else
    $KERNELCHAT_KEEP_ALIVE, else the configuration file's keep_alive, else 300. ValueError: one
    sentence naming where a bad value came from."""
    value, source = getattr(args, "keep_alive", None), "--keep-alive"
    if value is None and os.environ.get("KERNELCHAT_KEEP_ALIVE"):
        source = "KERNELCHAT_KEEP_ALIVE"
        try:
            value = float(os.environ[source])
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds (0: no resident model), "
                             f"got {os.environ[source]!r}") from None
    if value is None:
        return KEEP_ALIVE
    if not 0 <= value < math.inf:
        raise ValueError(f"{source} must be a number of seconds, 0 or more (0: no resident model), got {value}")
    return value


def check_options(args: argparse.Namespace) -> None:
    """Every value the one shot and the chat take, checked before a model loads: one sentence (ValueError)."""
    if args.save and not args.no_save:
        check_save_path(args.save)
    if getattr(args, "notebook", None):  # a bad file: one sentence naming it, before the model loads
        notebook_cells(args.notebook)
    check_budget_options(args)
    keep_alive(args)
    check_images_option(args)
    check_sandbox_options(args)


def make_workspace(workspace: str | Path) -> Path:
    """The --workspace folder, made (with its parents) when it does not exist yet. Raises ValueError with
    one sentence when the path is a file (or another non-folder) or the folder cannot be made."""
    p = Path(workspace).expanduser()
    if p.is_dir():
        return p
    if p.exists() or p.is_symlink():  # a file, a device, a dangling link: never replaced
        raise ValueError(f"--workspace {workspace}: that is a file, not a folder; give a folder (made if missing)")
    try:
        p.mkdir(parents=True)
    except FileExistsError:  # made by someone else in between, or a file on the way
        if not p.is_dir():
            raise ValueError(f"--workspace {workspace}: cannot make that folder (a file is in the way)") from None
    except OSError as e:
        raise ValueError(f"--workspace {workspace}: cannot make that folder ({e.strerror or e})") from None
    return p


# -- --save ----------------------------------------------------------------------------------------


def check_save_path(path: str | Path, what: str = "--save") -> Path:
    """Where a conversation is to be saved, checked before a model loads or anything runs: a file
    (not a folder) whose folder exists or can be made, and can be written (probed for real: as root,
    permission bits say nothing). Raises ValueError with one sentence."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {path}: that is a folder; give a file name, e.g. {p / 'conversation.json'}")
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise ValueError(f"{what} {path}: that is not a regular file; give another file name")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:  # the folders still to be made
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kernelchat-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None
    return p


def conversation_path(chat: Any, save: str | Path | None, prompt: str | None = None) -> Path:
    """Point `chat` at its file without writing it: the file appears with the first prompt, so a
    run that never got that far (a model that fails to load, a kernel or budget refusal) leaves none.
    Without `save`: the conversation's own readable name (from the time and `prompt`)."""
    if save:
        chat.path = Path(save).expanduser()
        return chat.path
    return chat.history.name_file(prompt)
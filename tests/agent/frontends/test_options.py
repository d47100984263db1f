"""One options module: every model, budget and sandbox flag reaches Chat and Kernel, in every front end."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.chat import Chat
from agent.core.budget import Budget
from agent.frontends import options
from agent.frontends.cli import UsageError, build_parser, prompt_parser
from agent.models.scripted import ScriptedBackend
from sandbox import KernelOptions
from tools.mcp_specs import MCPServerSpec

DATA = Path(__file__).resolve().parents[2] / "data"
MCP_FILE = DATA / "mcp_servers.json"
# Every flag of the model, budget and sandbox groups, with a value other than its default.
FLAGS = ["--model", "gpt-4o-mini", "--base-url", "http://models.example", "--api-key-file",
         str(DATA / "api_key.txt"),
         "--system", "be brief", "--max-steps", "3", "--max-tokens", "5000", "--max-usd", "1.5",
         "--max-seconds", "60", "--isolation", "gateway", "--gateway", "http://gw.example:8888",
         "--gateway-token-file", str(DATA / "gateway_token.txt"), "--network", "--gpu", "--workspace", "/tmp/ws", "--timeout", "9",
         "--memory-mb", "512", "--disk-mb", "256", "--keep-alive", "45", "--engine", "llama.cpp",
         "--no-constrain-calls", "--images", "--mcp", str(MCP_FILE)]
KERNEL = KernelOptions(workspace="/tmp/ws", isolation="gateway", network=True, gpu=True, timeout=9.0, memory_mb=512,
                       disk_mb=256, gateway_url="http://gw.example:8888", gateway_token="tok")
# Flags of the prompt parser that are not Chat options: what the front end itself does.
FRONT_END_FLAGS = {"-h", "--help", "--version", "--json", "--save", "--no-save", "--confirm", "--resume",
                   "--notebook",  # the front end runs its cells (notebook_events), to show them
                   "--timings"}  # the one shot measures and prints its phases
REFUSED = {"--api-key", "--gateway-token"}  # a secret on a command line: only their -file forms


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_the_test_sets_every_flag():
    """A new flag must be added to FLAGS (and so reach the options) or be named a front-end flag."""
    flags = {f for f in FLAGS if f.startswith("-")} | {"--constrain-calls", "--no-images"}  # the same flags' other forms
    assert option_strings(prompt_parser()) - FRONT_END_FLAGS - REFUSED - {"-m"} == flags


def test_every_flag_reaches_chat_and_kernel():
    args = prompt_parser().parse_args(FLAGS)
    assert options.kernel_options(args) == KERNEL
    chat = options.chat_options(args)
    backend = chat.pop("backend")  # --images: the server's backend, declared to take images
    assert (backend.api_model, backend.base_url, backend.client.api_key) == ("gpt-4o-mini", "http://models.example", "sk-test")
    assert backend.capabilities.images
    assert chat == dict(
        system="be brief",
        budget=Budget(max_tokens=5000, max_usd=1.5, max_seconds=60.0), max_steps=3, progress=True,
        keep_alive=45.0, engine="llama.cpp", constrain_calls=False, kernel=KERNEL,
        mcp_servers={"calc": MCPServerSpec(command="python3", args=["tests/data/mcp_test_server.py"],
                                           env={"MODE": "test"})})


def test_exec_takes_the_same_sandbox_flags():
    sandbox = FLAGS[FLAGS.index("--isolation"):FLAGS.index("--keep-alive")]
    args = build_parser().parse_args(["exec", "print(1)", *sandbox])
    assert options.kernel_options(args) == KERNEL


def test_run_takes_the_gateway_flags():
    args = build_parser().parse_args(["run", "t.toml", "--gateway", "http://gw.example:8888",
                                      "--gateway-token-file", str(DATA / "gateway_token.txt")])
    assert options.gateway_options(args) == dict(isolation="gateway", gateway_url="http://gw.example:8888",
                                                 gateway_token="tok")


def test_json_turns_the_progress_bars_off():
    assert options.chat_options(prompt_parser().parse_args(["hi", "--json"]))["progress"] is False


def test_no_gateway_flag_no_gateway_options():
    kernel = options.chat_options(prompt_parser().parse_args([]))["kernel"]
    assert "gateway_url" not in kernel.model_fields_set and kernel.gateway_url is None


def test_the_terminal_chat_honours_gateway():
    """The terminal chat's options (no prompt: the same parser) send its kernel to the gateway: with
    nothing listening at the URL, the first cell's kernel fails naming it."""
    args = prompt_parser().parse_args(["--gateway", "http://127.0.0.1:9",
                                       "--gateway-token-file", str(DATA / "gateway_token.txt")])
    assert args.prompt is None  # what opens the terminal chat
    opts = options.chat_options(args)
    with Chat(**{**opts, "backend": ScriptedBackend(["unused"])}) as chat:
        with pytest.raises(RuntimeError, match="kernel gateway at http://127.0.0.1:9"):
            chat.kernel()


@pytest.mark.parametrize("name", ["c.json", "new/folder/c.json"])
def test_check_save_path_accepts_a_writable_file(tmp_path, name):
    assert options.check_save_path(tmp_path / name) == tmp_path / name
    assert not (tmp_path / name).exists()  # checked, not written


def test_check_save_path_refuses_a_folder(tmp_path):
    with pytest.raises(ValueError, match="that is a folder"):
        options.check_save_path(tmp_path)


# -- check_options: every value, before a model loads ---------------------------------------------

def test_the_defaults_pass_the_checks():
    options.check_options(prompt_parser().parse_args(["hi"]))


@pytest.mark.parametrize("flags, says", [
    (["--max-steps", "0"], "--max-steps must be a whole number greater than 0, got 0"),
    (["--max-usd", "-1"], "--max-usd must be an amount in USD greater than 0, got -1.0"),
    (["--max-seconds", "inf"], "--max-seconds must be a number of seconds greater than 0, got inf"),
    (["--timeout", "nan"], "--timeout must be a number of seconds greater than 0, got nan"),
    (["--memory-mb", "0"], "--memory-mb must be a whole number of MB from 1 to 1,000,000,000,000, got 0"),
])
def test_check_options_refuses_bad_values(flags, says):
    with pytest.raises(ValueError) as e:
        options.check_options(prompt_parser().parse_args(["hi", *flags]))
    assert str(e.value) == says


def test_make_workspace(tmp_path):
    assert options.make_workspace(tmp_path) == tmp_path  # an existing folder: kept as it is
    new = tmp_path / "a" / "b"
    assert options.make_workspace(new) == new and new.is_dir()
    (tmp_path / "f").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for path, says in [(tmp_path / "f", "that is a file, not a folder"),
                       (tmp_path / "dangling", "that is a file, not a folder"),
                       (tmp_path / "f" / "sub", "cannot make that folder")]:
        with pytest.raises(ValueError, match=says):
            options.make_workspace(path)
    assert not (tmp_path / "nowhere").exists()  # a dangling link is not followed


def test_run_takes_keep_alive():
    assert options.keep_alive(build_parser().parse_args(["run", "t.toml", "--keep-alive", "0"])) == 0


@pytest.mark.parametrize("argv, env, expected", [
    ([], None, options.KEEP_ALIVE), ([], "12.5", 12.5), (["--keep-alive", "7"], "12.5", 7.0), (["--keep-alive", "0"], None, 0.0)])
def test_keep_alive_flag_then_environment_then_default(monkeypatch, argv, env, expected):
    monkeypatch.delenv("KERNELCHAT_KEEP_ALIVE", raising=False)
    if env is not None:
        monkeypatch.setenv("KERNELCHAT_KEEP_ALIVE", env)
    assert options.keep_alive(prompt_parser().parse_args(argv)) == expected


@pytest.mark.parametrize("argv, env, words", [
    (["--keep-alive", "-1"], None, "--keep-alive must be a number of seconds, 0 or more"),
    (["--keep-alive", "inf"], None, "--keep-alive must be"),
    ([], "soon", "KERNELCHAT_KEEP_ALIVE must be a number of seconds")])
def test_a_bad_keep_alive_is_one_sentence_before_anything_loads(monkeypatch, argv, env, words):
    monkeypatch.delenv("KERNELCHAT_KEEP_ALIVE", raising=False)
    if env is not None:
        monkeypatch.setenv("KERNELCHAT_KEEP_ALIVE", env)
    with pytest.raises(ValueError, match=words):
        options.check_options(prompt_parser().parse_args(argv))


# -- the kernel's options: one model, built once ---------------------------------------------------

def test_no_sandbox_flag_is_the_models_defaults():
    """A flag's default is None, "not given": the KernelOptions default is the only one."""
    for args in (prompt_parser().parse_args([]), build_parser().parse_args(["exec", "1"])):
        kernel = options.kernel_options(args)
        assert kernel == KernelOptions() and kernel.model_fields_set == set()


def test_the_timeout_help_reads_the_models_default():
    text = " ".join(prompt_parser().format_help().split())
    assert f"seconds per cell (default {KernelOptions.model_fields['timeout'].default:g})" in text


# -- secrets: from a file or the environment, never the command line --------------------------------

SECRET = "sk-proj-do-not-echo-me"


@pytest.mark.parametrize("argv", [
    ["hi", "--api-key", SECRET], ["hi", f"--api-key={SECRET}"], ["hi", "--gateway-token", SECRET],
    ["run", "t.toml", "--gateway-token", SECRET], ["exec", "1", f"--gateway-token={SECRET}"],
    ["models", "--api-key", SECRET], ["mcp", "--gateway-token", SECRET]])
def test_a_secret_on_the_command_line_is_refused_and_not_repeated(argv):
    """A command line is public (`ps`, /proc/PID/cmdline, shell history): the flag is refused, says
    what to do instead, and does not quote the secret back (argparse's own errors would)."""
    parser = build_parser() if argv[0] in ("run", "exec", "models", "mcp") else prompt_parser()
    with pytest.raises(UsageError) as e:
        parser.parse_args(argv)
    err = str(e.value)
    flag = next(a for a in argv if a.startswith("--")).split("=")[0]
    assert SECRET not in err
    assert f"{flag}-file FILE" in err and ("$OPENAI_API_KEY" if flag == "--api-key" else "$KERNELCHAT_GATEWAY_TOKEN") in err


def test_secret_files_are_read_at_once(tmp_path):
    key = tmp_path / "key"
    key.write_text(f"  {SECRET}  \nsecond line ignored\n")
    args = prompt_parser().parse_args(["hi", "--api-key-file", str(key)])
    assert options.chat_options(args)["api_key"] == SECRET
    args = build_parser().parse_args(["models", "--api-key-file", str(key)])
    assert args.api_key == SECRET


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("\n\n", "holds no secret on its first line"),
                                              (b"\xff\xfe", "not UTF-8 text")])
def test_an_unreadable_or_empty_secret_file_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as e:
        prompt_parser().parse_args(["hi", "--gateway-token-file", str(path)])
    err = str(e.value)
    assert f"argument --gateway-token-file: " in err and message in err and str(path) in err


# -- --images: a server's model that takes images ---------------------------------------------------

def test_without_images_the_model_is_named_not_built():
    chat = options.chat_options(prompt_parser().parse_args(["hi", "--model", "qwen", "--base-url", "http://x/v1"]))
    assert (chat["model"], chat["base_url"]) == ("qwen", "http://x/v1") and "backend" not in chat


@pytest.mark.parametrize("flag, takes", [("--images", True), ("--no-images", False)])
def test_images_declares_what_a_servers_model_takes(flag, takes):
    # gpt-4o takes images by name: --no-images turns that off; a server's llava takes none until --images
    for model, base in (("llava", "http://127.0.0.1:9/v1"), ("gpt-4o", None)):
        argv = ["hi", "--model", model, flag, "--api-key-file", str(DATA / "api_key.txt")]
        args = prompt_parser().parse_args(argv + (["--base-url", base] if base else []))
        options.check_options(args)
        assert options.chat_options(args)["backend"].capabilities.images is takes


def test_images_for_a_local_model_is_one_sentence_before_it_loads():
    args = prompt_parser().parse_args(["hi", "--model", "hf:smollm2", "--images"])
    with pytest.raises(ValueError, match=r"--images \(images = true in config.toml\) is for a server's model .*hf:smollm2 runs here and gets text only"):
        options.check_options(args)


def test_images_from_the_configuration_file_and_a_task_file(tmp_path):
    from agent.frontends import config
    from agent.frontends.runner import make_backends
    from agent.frontends.tasks import load_tasks

    path = tmp_path / "config.toml"
    path.write_text('model = "llava"\nbase_url = "http://127.0.0.1:9/v1"\nimages = true\n')
    parser = prompt_parser()
    config.apply(parser, config.load_config(path))
    assert options.chat_options(parser.parse_args(["hi"]))["backend"].capabilities.images
    assert build_parser(config.load_config(path)).parse_args(["run", "t.toml"]).images is True
    task = tmp_path / "t.toml"
    task.write_text('model = "llava"\nimages = true\nprompts = ["plot"]\n')
    tasks = load_tasks([task])
    url = "http://127.0.0.1:9/v1"
    assert make_backends(tasks, tmp_path / "out", base_url=url)[tasks[0].name].capabilities.images
    assert not make_backends(tasks, tmp_path / "out", base_url=url, images=False)[tasks[0].name].capabilities.images

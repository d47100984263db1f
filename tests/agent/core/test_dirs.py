"""kernelchat's folders: the XDG variables, read on each call, and every user of a path goes through them."""

from __future__ import annotations

import json
from pathlib import Path

from agent.core import dirs, store


def test_the_xdg_variables_are_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNELCHAT_CACHE", raising=False)
    for var, name in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache")):
        monkeypatch.setenv(var, str(tmp_path / name))
    assert dirs.config_dir() == tmp_path / "config" / "kernelchat"
    assert dirs.data_dir() == tmp_path / "data" / "kernelchat"
    assert dirs.conversations_dir() == store.conversations_dir() == tmp_path / "data" / "kernelchat" / "conversations"
    assert dirs.cache_dir() == tmp_path / "cache" / "kernelchat"
    monkeypatch.setenv("KERNELCHAT_CACHE", str(tmp_path / "kc"))
    assert dirs.cache_dir() == tmp_path / "kc"


def test_unset_or_empty_variables_mean_the_home_defaults(monkeypatch):
    monkeypatch.delenv("KERNELCHAT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = Path.home()
    assert dirs.config_dir() == home / ".config" / "kernelchat"
    assert dirs.data_dir() == home / ".local" / "share" / "kernelchat"
    assert dirs.cache_dir() == home / ".cache" / "kernelchat"


def test_prices_are_read_from_xdg_config_home(tmp_path, monkeypatch):
    """pricing used ~/.config whatever XDG_CONFIG_HOME said."""
    from agent.models import pricing

    monkeypatch.delenv("KERNELCHAT_PRICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert pricing.user_prices_path() == tmp_path / "kernelchat" / "prices.json"
    (tmp_path / "kernelchat").mkdir()
    (tmp_path / "kernelchat" / "prices.json").write_text(
        json.dumps({"models": {"my-xdg-model": {"input": 0.5, "output": 1.0}}}))
    assert pricing.lookup("my-xdg-model") == pricing.Price(input=0.5, output=1.0)

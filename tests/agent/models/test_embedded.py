"""The embedded model's helpers that need no model: loading quietly."""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from agent.models.embedded import quiet_loading


def test_a_cached_model_loads_without_a_progress_bar_and_the_setting_comes_back():
    hf_logging.enable_progress_bar()
    with quiet_loading():  # TransformersBackend loads its weights in here: no "Loading weights 100%" line
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()  # a caller's own transformers use keeps its bars
    hf_logging.disable_progress_bar()
    with quiet_loading():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()

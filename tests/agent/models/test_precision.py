"""The local model's precision: fp16 weights by default on a CPU, packed in the background and
swapped in between generations, with the same greedy tokens as fp32 (the real embedded model)."""

import pytest
import torch

from agent.core.messages import Message
from agent.models import precision


def test_auto_is_fp16_weights_on_a_cpu_and_bad_values_are_refused():
    assert precision.choose("cpu") == "fp16" and precision.choose("cpu", "fp32") == "fp32"
    assert precision.load_dtype("cpu", "fp16") is torch.float32  # packed after loading
    assert precision.load_dtype("cuda", "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, bf16, got 'int8'"):
        precision.choose("cpu", "int8")


def test_packing_swaps_every_linear_at_once_and_keeps_the_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        before = model(x)
    packer = precision.Fp16Packer(model)
    assert packer.wait(30) and isinstance(model[0], torch.nn.Linear)  # packed, not yet in place
    assert packer.swap() and isinstance(model[0], precision.Fp16Linear) and isinstance(model[2], precision.Fp16Linear)
    with torch.inference_mode():
        after = model(x)
    assert after.shape == before.shape and torch.allclose(after, before, atol=1e-2)


def test_a_stopped_packer_swaps_all_or_nothing():
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    packer = precision.Fp16Packer(model, background=True)
    packer.stop(wait=True)
    assert not packer.swap() or all(isinstance(m, precision.Fp16Linear) for m in model)


@pytest.mark.slow
def test_fp16_weights_give_the_fp32_models_greedy_tokens(local_backend):
    from agent.models.transformers_backend import TransformersBackend

    assert local_backend.precision == "fp16" and local_backend.fp16.wait(120)
    reference = TransformersBackend("hf:smollm2", progress=False, precision="fp32")
    assert reference.fp16 is None
    msgs = [Message(role="user", content="Explain step by step how you would check a data-analysis project.")]
    tokens = []
    for backend in (reference, local_backend):
        backend._cache, backend._cache_ids = None, []  # noqa: SLF001 - both from an empty cache
        for _ in backend.stream(msgs, max_tokens=48, temperature=0):
            pass
        tokens.append(backend.last_tokens)
    assert local_backend.fp16.swapped and isinstance(local_backend.hf_model.lm_head, precision.Fp16Linear)
    assert len(tokens[0]) == 48 and tokens[0] == tokens[1]

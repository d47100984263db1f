"""The precision a local model runs in, chosen per machine.

On a CPU, generating a token reads every weight once, so speed is set by the bytes of the weights
(this 2-core machine reads about 13.7 GB/s: fp32 SmolLM2-135M, 538 MB, caps near 25 tokens/s).
`fp16` keeps the Linear weights (the tied `lm_head` included) in fp16 and computes in fp32
(`torch.ao.quantization.quantize_dynamic` with `dtype=float16`): half the bytes, the same greedy
tokens as fp32 on the embedded model (checked by bench/local_speed.py and a test), prompt processing
unchanged. bf16 weights generate faster than fp32 too but, without native bf16 matmuls on most CPUs,
process prompts 5x slower, and int8 weights change the output: neither is a default.

On a GPU the weights are loaded in bf16 (fp16 where bf16 is not supported), as usual.
"""

from __future__ import annotations

import atexit
import threading
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def choose(device: str, precision: str = "auto") -> str:
    """`precision` made concrete for `device`: auto is fp16 weights on a CPU, bf16 on a GPU (fp16
    where the GPU has no bf16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16" if device == "cpu" else "fp32"


def load_dtype(device: str, precision: str) -> torch.dtype:
    """The dtype to load the weights in: on a CPU always fp32 (fp16 is applied after loading)."""
    if device == "cpu" and precision != "bf16":
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class Fp16Linear(torch.nn.Module):
    """A Linear whose weight fbgemm keeps packed in fp16, computing in fp32: what quantize_dynamic
    makes with dtype=float16, without its packing of a zero matrix first for every module (which
    doubled the conversion time)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp16"


class Fp16Packer:
    """Packs a model's Linear weights in fp16, on a background thread unless told otherwise: fbgemm
    packs at about 60 M weights/s, about 2 s for the embedded model, which a short one-shot would
    otherwise wait for. `swap()` puts them all in place at once, between generations, so no
    forward pass ever mixes fp32 and fp16 layers; until then the model runs in fp32."""

    def __init__(self, model: torch.nn.Module, skip: frozenset[str] = frozenset(), background: bool = True):
        self.model = model
        linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name not in skip]
        # The biggest first (lm_head: a fifth of the weights): stopping at exit then waits for a small one.
        self.todo = sorted(linears, key=lambda item: -item[1].weight.numel())
        self.packed: dict[str, Fp16Linear] = {}
        self.swapped = False
        self.stopped = threading.Event()
        self.finished = threading.Event()
        if background:
            # A C++ call still running when the interpreter exits aborts the process ("terminate
            # called without an active exception"): at exit, stop after the layer being packed.
            self.thread = threading.Thread(target=self.pack, name="kernelchat-fp16-pack", daemon=True)
            atexit.register(self.stop, wait=True)
            self.thread.start()
        else:
            self.thread = None
            self.pack()

    def pack(self) -> None:
        try:
            for name, linear in self.todo:
                if self.stopped.is_set():
                    return
                self.packed[name] = Fp16Linear(linear)
        finally:
            self.finished.set()

    @property
    def ready(self) -> bool:
        return self.finished.is_set() and len(self.packed) == len(self.todo)

    def swap(self) -> bool:
        """Put the packed layers in place if all are ready (call it when no forward pass runs);
        True once the model runs in fp16."""
        if not self.swapped and self.ready:
            for name, layer in self.packed.items():
                self.model.set_submodule(name, layer)
            self.swapped, self.todo, self.packed = True, [], {}  # the fp32 weights can go now
        return self.swapped

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the packing to finish; True when the model can be swapped to fp16."""
        self.finished.wait(timeout)
        return self.ready or self.swapped

    def stop(self, wait: bool = False) -> None:
        self.stopped.set()
        if wait and self.thread is not None:
            self.thread.join()


def apply(model: torch.nn.Module, device: str, precision: str, skip: frozenset[str] = frozenset()) -> torch.nn.Module:
    """Make a loaded model run in `precision` on `device` now (the benchmark's candidates): on a CPU,
    fp16 stores the Linear weights in fp16, except the modules named in `skip`."""
    if device == "cpu" and precision == "fp16":
        Fp16Packer(model, skip, background=False).swap()
    return model

"""The small-model strategies, a plug-in of the loop: what helps a model without tool training
(examples, attempts, the value its code printed, number grounding: strategy.py) and a small
tool-trained one (repeats, empty replies, fixes: toolmodel.py)."""

from agent.smallmodel.strategy import MAX_TOKENS_PER_STEP, SMALL_MODEL_SYSTEM, Examples, SmallModelStrategy
from agent.smallmodel.toolmodel import SmallToolModelStrategy

__all__ = ["MAX_TOKENS_PER_STEP", "SMALL_MODEL_SYSTEM", "Examples", "SmallModelStrategy", "SmallToolModelStrategy"]

"""kernelchat's agent: messages, backends, budgets, the loop, conversations and the CLI.

`Chat` (the Python API) is imported when first asked for: importing one leaf module of the agent
(a parser, the store) must not import the models, the kernel and the small-model strategy with it."""

from typing import TYPE_CHECKING, Any

from agent.core.budget import Budget, BudgetExceeded
from agent.core.events import Event
from agent.core.messages import Message, Usage

if TYPE_CHECKING:
    from agent.chat import Chat


def __getattr__(name: str) -> Any:
    if name == "Chat":
        from agent.chat import Chat

        return Chat
    raise AttributeError(f"module 'agent' has no attribute {name!r}")


__all__ = ["Chat", "Budget", "BudgetExceeded", "Event", "Message", "Usage"]

"""kernelchat's agent: messages, backends, budgets, the loop, conversations and the CLI."""

from .budget import Budget, BudgetExceeded
from .chat import Chat
from .events import Event
from .messages import Message, Usage

__all__ = ["Chat", "Budget", "BudgetExceeded", "Event", "Message", "Usage"]

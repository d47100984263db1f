"""kernelchat's agent: messages, backends, budgets, the loop, conversations and the CLI."""

from agent.core.budget import Budget, BudgetExceeded
from agent.chat import Chat
from agent.core.events import Event
from agent.core.messages import Message, Usage

__all__ = ["Chat", "Budget", "BudgetExceeded", "Event", "Message", "Usage"]

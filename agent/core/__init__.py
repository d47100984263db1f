"""The agent's core: messages, events, the Backend protocol, the conversation tree and its file,
budgets, the loop and its TurnStrategy hook, and the Session that ties them to a kernel. Knows no
front end, no model implementation, no small-model code."""

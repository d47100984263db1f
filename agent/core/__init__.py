"""The agent's core: messages, events, the conversation tree and its file, budgets, the loop. Knows no front end, no model implementation, no small-model code."""

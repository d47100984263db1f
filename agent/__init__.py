"""kernelchat's agent: messages, backends, budgets, the loop, conversations and the CLI."""

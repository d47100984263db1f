"""Model backends: one interface for OpenAI-compatible servers and local Hugging Face models."""

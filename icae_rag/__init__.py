"""icae_rag: answer from compressed context (ICAE and E2LLM soft prompts)."""

__version__ = "0.1.0"

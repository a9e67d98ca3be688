"""PersonaAgent core: persona, tools, prompts, LLM access. No Ray and no HTTP in this package."""

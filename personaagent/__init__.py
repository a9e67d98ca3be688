"""PersonaAgent Serve: cross-cutting pieces (settings, CLI, model preparation)."""

"""Training loops: local trainer (and the parameter-server trainer)."""

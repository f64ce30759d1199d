"""Code-interpreter drivers that run inside sandboxes (see docs/interpreter-protocol.md)."""

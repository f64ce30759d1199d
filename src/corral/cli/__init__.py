"""The ``corral`` command line: serve, manage sandboxes, run commands, move files, manage keys."""

"""E2B compatibility: the control plane, envd (port 49983) and the code interpreter (port 49999)."""

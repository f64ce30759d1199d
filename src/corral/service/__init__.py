"""The service: sandboxes and their lifecycle, auth, commands and files, independent of HTTP."""

"""The in-sandbox agent (stdlib only, relative imports only; see server.py) and, in `client`, its
host-side asyncio client. This package imports nothing: the agent's start-up pays for every module,
so host code imports `corral.agent.client` and `corral.agent.protocol` by name."""

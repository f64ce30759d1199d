"""Entry point: `python3 -m corral_agent --listen-fd N` (any package name), or run as a directory."""

import sys

if __package__:
    from .server import main
else:  # `python3 -I -S /path/to/corral_agent`: import the directory as a package by its own name
    import importlib
    import os

    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    main = importlib.import_module(os.path.basename(_here) + ".server").main

sys.exit(main())

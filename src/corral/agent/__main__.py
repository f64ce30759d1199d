"""Entry point: `python3 -m corral_agent --listen-fd N [--bundle NAME]` (any package name; also
imported by `python3 -c "import corral_agent.__main__" ...`), or run as a directory.
``--bundle NAME``: import from ``__pycache__/NAME`` of this package first (see ``bundle``)."""

import os
import sys

if __package__:
    if sys.path and sys.path[0] in ("", os.getcwd()):  # the agent imports nothing from its cwd
        del sys.path[0]
    if "--bundle" in sys.argv[:-1]:
        _at = sys.argv.index("--bundle")
        _name = sys.argv[_at + 1]
        del sys.argv[_at : _at + 2]
        if _name.startswith("bundle-") and "/" not in _name:
            from .bundle import install

            install(os.path.join(os.path.dirname(__file__), "__pycache__", _name))
    from .server import main
else:  # `python3 -I -S /path/to/corral_agent`: import the directory as a package by its own name
    import importlib

    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    main = importlib.import_module(os.path.basename(_here) + ".server").main

sys.exit(main())

"""Entry point: `python3 -m corral_agent --listen-fd N [--bundle NAME]` (any package name; the
backends use `python3 -P -c "import corral_agent.__main__" ...`), or run as a directory.
``--bundle NAME``: import from ``__pycache__/NAME`` of this package first (see ``bundle``)."""

import os
import sys

if __package__:
    if "--bundle" in sys.argv[:-1]:
        _at = sys.argv.index("--bundle")
        _name = sys.argv[_at + 1]
        del sys.argv[_at : _at + 2]
        _ok = False
        if _name.startswith("bundle-") and "/" not in _name:
            from .bundle import install

            _ok = install(os.path.join(os.path.dirname(__file__), "__pycache__", _name))
        if not _ok:
            from .log import log

            log("WARNING", f"start-up bundle {_name[:80]!r} not usable: importing module by module")
    from .server import main
else:  # `python3 -I -S /path/to/corral_agent`: import the directory as a package by its own name
    import importlib

    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    main = importlib.import_module(os.path.basename(_here) + ".server").main

sys.exit(main())

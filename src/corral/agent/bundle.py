"""Start the agent from one file: its modules and the stdlib modules it imports, already compiled.

An ordinary import costs ~15 system calls per module (a stat per path entry, then open, fstat,
read, close of the bytecode); the agent imports ~50 modules at start. Under gVisor's ptrace platform
each call is a round trip to the sentry, so the imports were ~45 ms of every gVisor sandbox's
start. The host writes the bytecode of those modules into one file next to the agent's own
bytecode (``corral.runtime.agent_bundle``); the agent reads it with one open and imports from
memory. Extension modules, and anything not in the file, still import the ordinary way.

Stdlib only, and only what is frozen into the interpreter: this module is imported before any other
(so no ``from __future__ import annotations`` either: ``__future__`` would come from the disk).
"""

import marshal
import sys
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER

TYPE_CHECKING = False  # typing itself is not frozen: not imported at run time
if TYPE_CHECKING:
    from types import ModuleType

FORMAT = 1  # bumped when the file's layout changes; a file of another format is ignored
Entry = tuple[str, bool, bytes]  # the module's path inside the sandbox, is it a package, its marshalled code


class BundleFinder:
    """A meta path finder and loader serving modules from a bundle; each module's code is dropped
    from memory once it has run."""

    def __init__(self, modules: dict[str, Entry]) -> None:
        self._modules = modules

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        entry = self._modules.get(name)
        if entry is None:
            return None
        origin, is_package, _ = entry
        spec = ModuleSpec(name, self, origin=origin, is_package=is_package)
        if is_package:  # submodules that are not in the bundle are found in the package's dir
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        spec.has_location = True  # sets __file__, so tracebacks and linecache find the source
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: "ModuleType") -> None:
        _, _, code = self._modules.pop(module.__name__)
        exec(marshal.loads(code), module.__dict__)


def load(data: bytes) -> dict[str, Entry] | None:
    """The modules of a bundle, or None if it is not one this interpreter can run."""
    try:
        magic, fmt, modules = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if magic != MAGIC_NUMBER or fmt != FORMAT or not isinstance(modules, dict):
        return None
    return modules


def install(path: str) -> bool:
    """Serve imports from the bundle at ``path`` first; False (and nothing changed) if it can't."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    modules = load(data)
    if modules is None:
        return False
    sys.meta_path.insert(0, BundleFinder(modules))
    return True


def dump(modules: dict[str, Entry]) -> bytes:
    """A bundle of ``modules`` for interpreters of this one's bytecode version (the host side)."""
    return marshal.dumps((MAGIC_NUMBER, FORMAT, modules))

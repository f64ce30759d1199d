"""``corral serve``: run the API with uvicorn in the foreground."""

from __future__ import annotations

import logging
import sys

import uvicorn

from corral.api.http_protocol import protocol_class
from corral.config import Settings
from corral.runtime.host import HostUnsupported, check_host, raise_fd_limit
from corral.runtime.rootfs import RECIPES, RootfsError, build, build_lock, host_mirror, is_current
from corral.service.templates import Templates


def ensure_builtin_templates(settings: Settings) -> None:
    """Build the built-in templates once (mmdebstrap), again when their recipe changed."""
    templates = Templates(settings.templates_dir)
    if all(is_current(r, templates.rootfs(r.name)) for r in RECIPES.values()):
        return
    with build_lock(settings.templates_dir):
        for recipe in RECIPES.values():
            rootfs = templates.rootfs(recipe.name)
            if is_current(recipe, rootfs):
                continue
            mirror = settings.apt_mirror or host_mirror()
            try:
                build(recipe, rootfs, mirror, settings.subid_base, log=lambda m: print(f"corral: {m}", flush=True))
            except RootfsError as exc:
                print(f"corral: {exc}", file=sys.stderr)
                raise SystemExit(2) from exc


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_host()
    except HostUnsupported as exc:
        print(f"corral: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    before, after = raise_fd_limit()
    if after > before:
        log = logging.getLogger("corral")
        log.info("open files limit raised from %d to %d (sandboxes keep %d)", before, after, before)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_builtin_templates(settings)
    from corral.api.app import create_app

    print(f"corral: listening on http://{settings.host}:{settings.port} (data: {settings.data_dir})", flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning",
        loop="uvloop", http=protocol_class(settings.header_timeout), timeout_graceful_shutdown=10,
    )

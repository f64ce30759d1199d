"""Base images: what a Dockerfile's FROM image maps to (a built-in base, a template, or an OCI image)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from corral.templates.instructions import DockerfileError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILTIN_BASES = ("base", "code-interpreter")

_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # corral.service.templates.NAME
_DEBIAN_TAG = re.compile(r"^(?:latest|bookworm|12(?:\.\d+)*)(?:-\d{8})?(?:-slim)?$")
_PYTHON_TAG = re.compile(r"^3(?:\.11(?:\.\d+)?)?(?:-slim)?(?:-bookworm)?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-f]{32,}$")
_REGISTRY = re.compile(r"^(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*)(?::\d+)?$")


@dataclass(frozen=True)
class BaseRef:
    """What a build starts from: a built-in base, a previously built template, or an OCI image to pull."""

    kind: Literal["builtin", "template", "oci"]
    name: str  # "base"/"code-interpreter", a template name, or a normalised reference (docker.io/library/x:tag)


def base_of(image: str) -> BaseRef:
    """Map a FROM image to a ``BaseRef``; raises ``DockerfileError`` (line None) for what Corral lacks.

    ``base``/``code-interpreter`` are the built-in bases; ``debian``, ``debian:bookworm``, ``debian:12``
    (``-slim`` and dated variants too) and ``python:3``/``python:3.11…`` map to ``base`` (Debian 12 with
    Python 3.11; upstream ``debian:latest`` and ``python:3`` have since moved on, but a build here gets
    the nearest base rather than a surprise pull). A bare name is a template built earlier (the builder
    checks it exists). Anything with a registry, a ``/`` or a digest is an OCI image. Any other
    ``name:tag`` is refused with a hint to spell out its registry, so no image is pulled by accident.
    """
    image = image.strip()
    if not image:
        raise DockerfileError(None, "FROM needs an image")
    if "/" in image or "@" in image:
        return BaseRef("oci", _oci_reference(image))
    name, _, tag = image.partition(":")
    full = f"docker.io/library/{image}"
    if name != name.lower():
        raise DockerfileError(None, f"invalid image {image!r}: repository names must be lowercase")
    if name == "scratch":
        raise DockerfileError(None, "FROM scratch is not supported: start from base, code-interpreter, "
                                    "a template or an OCI image")
    if name in BUILTIN_BASES and not tag:
        return BaseRef("builtin", name)
    if name in BUILTIN_BASES:
        raise DockerfileError(None, f"{image}: built-in templates have no tags; write FROM {name}")
    if name == "debian" and (not tag or _DEBIAN_TAG.match(tag)):
        return BaseRef("builtin", "base")
    if name == "python" and _PYTHON_TAG.match(tag):
        return BaseRef("builtin", "base")
    if name in ("debian", "python", "ubuntu"):
        raise DockerfileError(None, f"{image} is not available: Corral's bases are Debian 12 (bookworm) with "
                                    f"Python 3.11 (FROM base, debian:bookworm or python:3.11); write {full} to "
                                    "pull the image from a registry instead")
    if tag:
        raise DockerfileError(None, f"{image} is neither a Corral base nor a template; write {full} to pull "
                                    "the image from a registry")
    if not _TEMPLATE.match(name):
        raise DockerfileError(None, f"invalid image {image!r}: not a template name or an image reference")
    return BaseRef("template", name)


def _oci_reference(image: str) -> str:
    rest, _, digest = image.partition("@")
    if digest and not _DIGEST.match(digest):
        raise DockerfileError(None, f"invalid image {image!r}: bad digest {digest!r}")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    path, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, "")
    parts = path.split("/")
    registry = "docker.io"
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
    elif len(parts) == 1:
        parts.insert(0, "library")
    if not _REGISTRY.match(registry) or not all(_COMPONENT.match(p) for p in parts) or (tag and not _TAG.match(tag)):
        raise DockerfileError(None, f"invalid image reference {image!r}")
    ref = f"{registry}/{'/'.join(parts)}"
    if tag or not digest:
        ref += f":{tag or 'latest'}"
    return ref + (f"@{digest}" if digest else "")

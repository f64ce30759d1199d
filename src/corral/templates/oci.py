"""Pull OCI and Docker images from a registry (distribution API v2) into a store of unpacked layers.

Everything a registry sends is hostile: every manifest, config and layer is checked against its sha256
digest while it streams (and each layer's uncompressed tar against the config's ``diff_ids``), sizes
are capped, and layers are unpacked by ``oci_unpack_priv`` under its safety rules.

Store layout (the root is kept 0700: layers hold setuid files owned by sandbox ids)::

    <store>/<hex>/fs              an unpacked layer (an overlay lower dir), named by its blob digest
    <store>/blobs/sha256/<hex>    manifests, indexes and configs as fetched, so a pull by digest works offline
    <store>/tmp/<hex>.<pid>.<r>   work in progress, renamed into place only when complete
    <store>/id_offset             the id offset the layers were unpacked with (one per store)

Concurrent pulls into one store are safe: each works in its own temp dir and the first rename wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from corral.templates.oci_unpack_priv import UnpackError, unpack_layer

MAX_MANIFEST = 4 << 20
MAX_CONFIG = 8 << 20
MAX_LAYER = 8 << 30  # compressed
MAX_UNPACKED = 32 << 30  # one layer's tar
MAX_LAYERS = 128
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_REGISTRY = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^",\s]*))')
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class PullError(Exception):
    """An image could not be pulled; ``str()`` names the reference and what went wrong."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(f"{reference}: {message}")
        self.reference = reference


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config a template uses (OCI image config ``config`` object)."""

    env: tuple[tuple[str, str], ...]
    workdir: str | None
    user: str | None
    cmd: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    labels: dict[str, str]
    exposed_ports: tuple[str, ...]

    @classmethod
    def from_json(cls, raw: bytes) -> ImageConfig:
        """Parse an image config blob; ``ValueError`` if it is not JSON of the expected shape."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        c = _field(doc, "config", dict) or {}
        env = []
        for item in _strings(c, "Env") or ():
            key, _, value = item.partition("=")
            env.append((key, value))
        labels = _field(c, "Labels", dict) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError("Labels must map strings to strings")
        return cls(
            env=tuple(env),
            workdir=_field(c, "WorkingDir", str) or None,
            user=_field(c, "User", str) or None,
            cmd=_strings(c, "Cmd"),
            entrypoint=_strings(c, "Entrypoint"),
            labels=dict(labels),
            exposed_ports=tuple(sorted(_field(c, "ExposedPorts", dict) or {})),
        )


@dataclass(frozen=True)
class PulledImage:
    """A pulled image: ``layers`` are unpacked layer dirs, topmost first (overlay ``lowerdir`` order)."""

    reference: str
    manifest_digest: str
    layers: tuple[Path, ...]
    config: ImageConfig


async def pull(
    reference: str,
    store: Path,
    *,
    id_offset: int = 1_000_000,
    on_progress: Callable[[str], None] | None = None,
    ca_bundle: str | None = None,
    insecure: Iterable[str] = (),
) -> PulledImage:
    """Pull ``reference`` (``registry/repo:tag``, ``…@sha256:…`` or both; the digest wins) into ``store``.

    HTTPS is used (verified against ``ca_bundle`` or the system CAs), plain HTTP only for loopback
    registries and names (``host`` or ``host:port``) in ``insecure``. Auth is anonymous, with bearer
    tokens when the registry asks for them. Layers already in the store are not fetched again, and a
    pull by digest whose manifest, config and layers are stored needs no network. Raises ``PullError``.
    """
    ref = _Ref.parse(reference)
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)
    _check_offset(store, id_offset, reference)
    for sub in ("tmp", "blobs/sha256"):
        (store / sub).mkdir(parents=True, exist_ok=True)
    _remove_stale(store / "tmp")
    progress = on_progress or (lambda _msg: None)
    try:
        async with _client(ca_bundle) as client:
            puller = _Puller(client, ref, reference, store, plain=ref.plain_http(insecure))
            return await puller.run(id_offset, progress)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise PullError(reference, f"registry {ref.host} unreachable: {e or type(e).__name__}") from e
    except httpx.HTTPError as e:
        raise PullError(reference, f"connection to registry {ref.host} failed: {e or type(e).__name__}") from e
    except OSError as e:
        raise PullError(reference, f"store or TLS setup failed: {e}") from e


@dataclass(frozen=True)
class _Ref:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> _Ref:
        rest, _, digest = reference.partition("@")
        registry, _, path = rest.partition("/")
        slash, colon = path.rfind("/"), path.rfind(":")
        repo, tag = (path[:colon], path[colon + 1:]) if colon > slash else (path, None)
        if digest and not _DIGEST.match(digest):
            raise PullError(reference, "unsupported digest (only sha256:<64 hex> is accepted)")
        if not (_REGISTRY.match(registry) and _REPO.match(repo) and (tag is None or _TAG.match(tag))):
            raise PullError(reference, "invalid reference: expected registry/repository[:tag][@sha256:…]")
        return cls(registry, repo, tag, digest or None)

    @property
    def host(self) -> str:
        return "registry-1.docker.io" if self.registry == "docker.io" else self.registry

    def plain_http(self, insecure: Iterable[str]) -> bool:
        name = self.registry.rsplit(":", 1)[0] if not self.registry.endswith("]") else self.registry
        return name in LOOPBACK or bool({self.registry, name} & set(insecure))


@dataclass(frozen=True)
class _Desc:
    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, obj: Any, what: str) -> _Desc:
        if not isinstance(obj, dict):
            raise ValueError(f"{what}: not a descriptor")
        media, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ValueError(f"{what}: unsupported digest {str(digest)[:80]!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{what}: bad size")
        return cls(media if isinstance(media, str) else "", digest, size)

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


class _Puller:
    """One pull: the registry session (with its bearer token) and the store it fills."""

    def __init__(self, client: httpx.AsyncClient, ref: _Ref, reference: str, store: Path, *, plain: bool) -> None:
        self.client, self.ref, self.reference, self.store, self.plain = client, ref, reference, store, plain
        self.base = f"{'http' if plain else 'https'}://{ref.host}/v2/{ref.repository}"
        self.token: str | None = None

    def fail(self, message: str) -> PullError:
        return PullError(self.reference, message)

    async def run(self, id_offset: int, progress: Callable[[str], None]) -> PulledImage:
        progress(f"resolving {self.reference}")
        digest, doc = await self._resolve()
        try:
            config_desc = _Desc.of(doc.get("config"), "config")
            layers = [_Desc.of(d, "layer") for d in _field(doc, "layers", list) or []]
        except ValueError as e:
            raise self.fail(f"bad manifest {digest}: {e}") from e
        if config_desc.media_type not in CONFIG_TYPES:
            raise self.fail(f"unsupported config media type {config_desc.media_type!r}")
        if not layers or len(layers) > MAX_LAYERS:
            raise self.fail(f"manifest {digest} has {len(layers)} layers (1..{MAX_LAYERS} supported)")
        for layer in layers:
            if layer.media_type not in LAYER_TYPES:
                raise self.fail(f"unsupported layer media type {layer.media_type!r} ({layer.digest})")
        raw = await self._blob_bytes(config_desc, MAX_CONFIG)
        config, diff_ids = self._parse_config(raw)
        if len(diff_ids) != len(layers):
            raise self.fail(f"config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
        paths: list[Path] = []
        for n, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True), 1):
            label = f"layer {layer.digest[:19]} ({n}/{len(layers)})"
            paths.append(await self._layer(layer, diff_id, id_offset, label, progress))
        progress(f"pulled {self.reference} ({digest})")
        topmost_first = list(dict.fromkeys(reversed(paths)))  # a repeated layer adds nothing below its top copy
        return PulledImage(self.reference, digest, tuple(topmost_first), config)

    async def _resolve(self) -> tuple[str, dict[str, Any]]:
        """The image manifest (following an index to linux/<this arch>) and its digest."""
        digest, doc = await self._manifest(self.ref.digest or self.ref.tag or "latest")
        media = doc.get("mediaType") or ("index" if "manifests" in doc else "manifest")
        if media in INDEX_TYPES or media == "index":
            arch = _arch(self.reference)
            entries = _field(doc, "manifests", list) or []
            for entry in entries:
                plat = entry.get("platform") if isinstance(entry, dict) else None
                if isinstance(plat, dict) and plat.get("os") == "linux" and plat.get("architecture") == arch \
                        and plat.get("variant") in (None, "", "v8" if arch == "arm64" else None):
                    try:
                        chosen = _Desc.of(entry, "index entry")
                    except ValueError as e:
                        raise self.fail(f"bad index {digest}: {e}") from e
                    if chosen.media_type not in MANIFEST_TYPES:
                        raise self.fail(f"unsupported media type {chosen.media_type!r} in index {digest}")
                    digest, doc = await self._manifest(chosen.digest)
                    media = doc.get("mediaType") or "manifest"
                    break
            else:
                have = sorted({_platform(e) for e in entries})
                raise self.fail(f"unsupported platform: no linux/{arch} image (index has {', '.join(have) or 'none'})")
        if media not in (*MANIFEST_TYPES, "manifest"):
            raise self.fail(f"unsupported manifest media type {str(media)[:100]!r}")
        return digest, doc

    async def _manifest(self, tag_or_digest: str) -> tuple[str, dict[str, Any]]:
        by_digest = tag_or_digest.startswith("sha256:")
        raw = self._stored(tag_or_digest) if by_digest else None
        if raw is None:
            accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
            async with self._get(f"/manifests/{tag_or_digest}", f"manifest {tag_or_digest}", accept) as r:
                raw = await self._read(r, MAX_MANIFEST, f"manifest {tag_or_digest}")
                header = r.headers.get("docker-content-digest")
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
            if (by_digest and digest != tag_or_digest) or (header and header != digest):
                raise self.fail(f"digest mismatch for manifest {tag_or_digest}: the registry sent {digest}")
            self._keep(digest, raw)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise self.fail(f"manifest {tag_or_digest} is not JSON") from e
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise self.fail(f"unsupported manifest {tag_or_digest} (only schema version 2)")
        return "sha256:" + hashlib.sha256(raw).hexdigest(), doc

    async def _blob_bytes(self, desc: _Desc, cap: int) -> bytes:
        raw = self._stored(desc.digest)
        if raw is not None:
            return raw
        if desc.size > cap:
            raise self.fail(f"blob {desc.digest} is too large ({desc.size} bytes, at most {cap})")
        async with self._get(f"/blobs/{desc.digest}", f"blob {desc.digest}") as r:
            raw = await self._read(r, desc.size, f"blob {desc.digest}")
        if hashlib.sha256(raw).hexdigest() != desc.hex or len(raw) != desc.size:
            raise self.fail(f"digest mismatch for blob {desc.digest}")
        self._keep(desc.digest, raw)
        return raw

    def _parse_config(self, raw: bytes) -> tuple[ImageConfig, list[str]]:
        try:
            config = ImageConfig.from_json(raw)
            doc = json.loads(raw)  # a dict: from_json checked
            rootfs = _field(doc, "rootfs", dict) or {}
            diff_ids = _strings(rootfs, "diff_ids") or ()
        except ValueError as e:
            raise self.fail(f"bad image config: {e}") from e
        if not all(_DIGEST.match(d) for d in diff_ids):
            raise self.fail("bad image config: diff_ids must be sha256 digests")
        arch, system = doc.get("architecture"), doc.get("os")
        if (system not in (None, "linux")) or (arch not in (None, _arch(self.reference))):
            raise self.fail(f"unsupported platform {system}/{arch} (this machine runs linux/{_arch(self.reference)})")
        return config, list(diff_ids)

    async def _layer(self, desc: _Desc, diff_id: str, id_offset: int, label: str,
                     progress: Callable[[str], None]) -> Path:
        final = self.store / desc.hex
        if final.is_dir():
            progress(f"{label}: cached")
            return final / "fs"
        if desc.size > MAX_LAYER:
            raise self.fail(f"layer {desc.digest} is too large ({desc.size} bytes, at most {MAX_LAYER})")
        work = Path(tempfile.mkdtemp(prefix=f"{desc.hex}.{os.getpid()}.", dir=self.store / "tmp"))
        try:
            progress(f"{label}: downloading")
            await self._download(desc, work / "blob")
            (work / "layer" / "fs").mkdir(parents=True)
            progress(f"{label}: unpacking")
            await self._unpack(desc, diff_id, work, id_offset)
            try:
                os.rename(work / "layer", final)
            except OSError:
                if not final.is_dir():  # else another pull of the same layer finished first
                    raise
            progress(f"{label}: done")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return final / "fs"

    async def _download(self, desc: _Desc, path: Path) -> None:
        digest, size, pending = hashlib.sha256(), 0, bytearray()
        async with self._get(f"/blobs/{desc.digest}", f"layer {desc.digest}") as r:
            with open(path, "wb") as f:
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > desc.size:
                        raise self.fail(f"layer {desc.digest} is larger than its manifest says ({desc.size} bytes)")
                    digest.update(chunk)
                    pending += chunk
                    if len(pending) >= 4 << 20:  # disk writes off the event loop, a few MiB at a time
                        await asyncio.to_thread(f.write, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(f.write, bytes(pending))
        if digest.hexdigest() != desc.hex or size != desc.size:
            raise self.fail(f"digest mismatch for layer {desc.digest}")

    async def _unpack(self, desc: _Desc, diff_id: str, work: Path, id_offset: int) -> None:
        stop = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(_unpack_blob, work / "blob", work / "layer" / "fs",
                                                      id_offset, stop))
        try:
            got = await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()  # let the thread finish before the caller removes its dir
            with contextlib.suppress(BaseException):
                await job
            raise
        except UnpackError as e:
            raise self.fail(f"hostile layer {desc.digest}: {e}") from e
        except (OSError, EOFError, ValueError) as e:
            raise self.fail(f"layer {desc.digest} cannot be unpacked: {e}") from e
        if got != diff_id:
            raise self.fail(f"digest mismatch for layer {desc.digest}: its tar is {got}, the config says {diff_id}")

    @contextlib.asynccontextmanager
    async def _get(self, path: str, what: str, accept: str | None = None) -> Any:
        r = await self._send(path, accept)
        if r.status_code == 401 and self.token is None:
            challenge = r.headers.get("www-authenticate", "")
            await r.aclose()
            self.token = await self._login(challenge)
            r = await self._send(path, accept)
        try:
            if r.status_code != 200:
                raise self.fail(_status_message(r.status_code, await self._read(r, 65536, what, quiet=True), what))
            yield r
        finally:
            await r.aclose()

    async def _send(self, path: str, accept: str | None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return await self.client.send(self.client.build_request("GET", self.base + path, headers=headers), stream=True)

    async def _login(self, challenge: str) -> str:
        scheme, _, rest = challenge.partition(" ")
        params = {k.lower(): a or b for k, a, b in _PARAM.findall(rest)}
        realm = params.get("realm", "")
        if scheme.lower() != "bearer" or not realm:
            raise self.fail("unauthorized: the registry wants credentials (only anonymous pulls are supported)")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as e:
            raise self.fail(f"unauthorized: bad token realm {realm[:100]!r}") from e
        if url.scheme != "https" and not (self.plain and url.scheme == "http"):
            raise self.fail(f"unauthorized: refusing token realm {realm[:100]!r} (not https)")
        query = {"scope": f"repository:{self.ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        async with self.client.stream("GET", url, params=query) as r:
            body = await self._read(r, 1 << 20, "token", quiet=True)
        token = None
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        if r.status_code != 200 or not isinstance(token, str) or not token.isprintable() or not token:
            raise self.fail(f"unauthorized: no anonymous pull token from {url.host} (HTTP {r.status_code})")
        return token

    async def _read(self, r: httpx.Response, cap: int, what: str, *, quiet: bool = False) -> bytes:
        out = bytearray()
        async for chunk in r.aiter_bytes():
            out += chunk
            if len(out) > cap:
                if quiet:
                    return bytes(out[:cap])
                raise self.fail(f"{what} is larger than {cap} bytes")
        return bytes(out)

    def _stored(self, digest: str) -> bytes | None:
        path = self.store / "blobs" / "sha256" / digest.removeprefix("sha256:")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return raw if hashlib.sha256(raw).hexdigest() == path.name else None

    def _keep(self, digest: str, raw: bytes) -> None:
        final = self.store / "blobs" / "sha256" / digest.removeprefix("sha256:")
        fd, tmp = tempfile.mkstemp(dir=self.store / "tmp", prefix=f"{final.name}.{os.getpid()}.")
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, final)


class _Hashing:
    """A reader that hashes and counts what passes through, and refuses more than ``cap`` bytes."""

    def __init__(self, src: BinaryIO, cap: int) -> None:
        self.src, self.cap, self.size, self.hash = src, cap, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n if n >= 0 else 1 << 20)
        self.size += len(data)
        if self.size > self.cap:
            raise UnpackError(f"layer unpacks to more than {self.cap} bytes")
        self.hash.update(data)
        return data


def _unpack_blob(blob: Path, fs: Path, id_offset: int, stop: threading.Event) -> str:
    """Unpack a verified blob (gzip or plain tar, sniffed) into ``fs``; return its tar's sha256 digest."""
    with open(blob, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic == b"\x28\xb5\x2f\xfd":
            raise ValueError("zstd-compressed layers are not supported")
        src: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if magic[:2] == b"\x1f\x8b" else raw  # type: ignore[assignment]
        reader = _Hashing(src, MAX_UNPACKED)
        unpack_layer(reader, fs, id_offset=id_offset, stop=stop)  # type: ignore[arg-type]
        while reader.read(1 << 20):  # the tar's end padding counts towards its digest
            pass
    return "sha256:" + reader.hash.hexdigest()


def _client(ca_bundle: str | None) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    return httpx.AsyncClient(verify=verify, follow_redirects=True, trust_env=False,
                             timeout=httpx.Timeout(60, connect=15), headers={"User-Agent": "corral"})


def _status_message(status: int, body: bytes, what: str) -> str:
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError, KeyError):
        code = str(json.loads(body)["errors"][0]["code"])[:60]
    if status == 404:
        return f"not found: {what}" + (f" ({code})" if code else "")
    if status in (401, 403):
        return f"unauthorized for {what} (private image, or the registry wants credentials)"
    if status == 429:
        return "rate limited by the registry (HTTP 429)"
    return f"the registry answered HTTP {status} for {what}" + (f" ({code})" if code else "")


def _check_offset(store: Path, id_offset: int, reference: str) -> None:
    mark = store / "id_offset"
    try:
        had = int(mark.read_text())
    except FileNotFoundError:
        mark.write_text(f"{id_offset}\n")
        return
    if had != id_offset:
        raise PullError(reference, f"store {store} holds layers for id offset {had}, not {id_offset}")


def _remove_stale(tmp: Path) -> None:
    """Drop temp entries of pulls whose process is gone (a crash or kill mid-pull)."""
    for entry in tmp.iterdir():
        parts = entry.name.split(".")
        if len(parts) >= 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _arch(reference: str) -> str:
    arch = _ARCH.get(platform.machine().lower())
    if arch is None:
        raise PullError(reference, f"unsupported platform: no images for {platform.machine()}")
    return arch


def _platform(entry: Any) -> str:
    plat = entry.get("platform") if isinstance(entry, dict) else None
    if not isinstance(plat, dict):
        return "?"
    return "/".join(str(plat.get(k))[:20] for k in ("os", "architecture", "variant") if plat.get(k))


def _field(doc: Any, key: str, kind: type) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__}")
    return value


def _strings(doc: Any, key: str) -> tuple[str, ...] | None:
    value = _field(doc, key, list)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return None if value is None else tuple(value)

"""Pulling images from a real registry (Debian's docker-registry) on loopback, pushed by the test itself.

The image: layer 1 (gzip) holds busybox with /bin/sh linked to it and a few files; layer 2 (plain tar)
deletes /etc/motd, makes /opt/app opaque and adds a file owned by uid 1000. The layers must work as a
real overlay lower stack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from corral.templates.oci import ImageConfig, PulledImage, PullError, pull

OFFSET = 1_000_000
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
OTHER_ARCH = "arm64" if ARCH == "amd64" else "amd64"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and overlay mounts need root"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs the docker-registry package"),
]


@dataclass
class Registry:
    host: str
    root: Path  # the registry's storage
    client: httpx.Client

    def blob_file(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


@dataclass
class Image:
    repo: str
    digest: str  # of the manifest pushed under the tag
    layers: list[str]  # blob digests, base first
    ref: str


@contextlib.contextmanager
def running_registry(extra_config: str = "", token: str | None = None) -> Iterator[Registry]:
    """A docker-registry on 127.0.0.1 with its storage in a temp dir; ready when /v2/ answers."""
    work = Path(tempfile.mkdtemp(prefix="corral-registry-"))
    port = free_port()
    (work / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra_config}"
    )
    log = open(work / "log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")], stdout=log, stderr=log)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "log").read_text()
            try:
                if client.get("/v2/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "registry did not answer /v2/ in 30 s"
            time.sleep(0.05)  # readiness poll of a separate process, not test synchronisation
        yield Registry(f"127.0.0.1:{port}", work / "data", client)
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(work)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture
def store() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-oci-store-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path)


def tar_bytes(*members: tuple[str, bytes, str | None, int, int]) -> bytes:
    """(name, data, symlink target or None, mode, uid) → an uncompressed tar; names ending in / are dirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link, mode, uid in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 1_700_000_000
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            elif link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(reg: Registry, repo: str, data: bytes) -> str:
    r = reg.client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["location"]  # carries the upload's state in its query
    r = reg.client.put(f"{location}{'&' if '?' in location else '?'}digest={sha(data)}", content=data,
                       headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return sha(data)


def push_manifest(reg: Registry, repo: str, ref: str, doc: dict, media_type: str) -> str:
    raw = json.dumps(doc).encode()
    r = reg.client.put(f"/v2/{repo}/manifests/{ref}", content=raw, headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    return sha(raw)


def push_image(reg: Registry, repo: str, tag: str, tars: list[bytes], *, arch: str = ARCH,
               media_type: str = DOCKER_MANIFEST, gzip_first: bool = True, diff_ids: list[str] | None = None,
               sizes: list[int] | None = None) -> Image:
    blobs = [gzip.compress(t, mtime=0) if gzip_first and i == 0 else t for i, t in enumerate(tars)]
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "GREETING=hi there"], "WorkingDir": "/opt/app",
                   "User": "1000:1000", "Cmd": ["-c", "echo hi"], "Entrypoint": ["/bin/sh"],
                   "Labels": {"team": "corral"}, "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(t) for t in tars]},
    }).encode()
    layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip" if media_type == DOCKER_MANIFEST else GZIP_LAYER
    layers = []
    for i, (blob, raw) in enumerate(zip(blobs, tars, strict=True)):
        kind = layer_type if blob is not raw else (TAR_LAYER if media_type == OCI_MANIFEST else layer_type)
        size = sizes[i] if sizes else len(blob)
        layers.append({"mediaType": kind, "digest": push_blob(reg, repo, blob), "size": size})
    config_type = ("application/vnd.docker.container.image.v1+json" if media_type == DOCKER_MANIFEST
                   else "application/vnd.oci.image.config.v1+json")
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": {"mediaType": config_type, "digest": push_blob(reg, repo, config), "size": len(config)},
           "layers": layers}
    digest = push_manifest(reg, repo, tag, doc, media_type)
    return Image(repo, digest, [d["digest"] for d in layers], f"{reg.host}/{repo}:{tag}")


def base_tars(marker: bytes = b"") -> list[bytes]:
    busybox = Path("/bin/busybox").read_bytes()
    one = tar_bytes(
        ("bin/", b"", None, 0o755, 0), ("bin/busybox", busybox, None, 0o755, 0), ("bin/sh", b"", "busybox", 0o777, 0),
        ("etc/", b"", None, 0o755, 0), ("etc/motd", b"hello\n", None, 0o644, 0),
        ("etc/keep", b"kept\n" + marker, None, 0o644, 0),
        ("opt/", b"", None, 0o755, 0), ("opt/app/", b"", None, 0o755, 0), ("opt/app/old", b"old", None, 0o644, 0),
    )
    two = tar_bytes(
        ("etc/.wh.motd", b"", None, 0o644, 0),
        ("opt/app/", b"", None, 0o755, 0), ("opt/app/.wh..wh..opq", b"", None, 0o644, 0),
        ("opt/app/new", b"new\n", None, 0o644, 0),
        ("home/", b"", None, 0o755, 0), ("home/user/", b"", None, 0o700, 1000),
        ("home/user/data", b"mine\n", None, 0o600, 1000),
    )
    return [one, two]


@pytest.fixture(scope="module")
def image(registry: Registry) -> Image:
    return push_image(registry, "team/img", "v1", base_tars())


def run_pull(ref: str, store: Path, **kw: object) -> PulledImage:
    return asyncio.run(pull(ref, store, **kw))  # type: ignore[arg-type]


def layer_dir(store: Path, digest: str) -> Path:
    return store / digest.removeprefix("sha256:") / "fs"


def test_pull_by_tag_gives_layers_topmost_first(image: Image, store: Path) -> None:
    seen: list[str] = []
    got = run_pull(image.ref, store, on_progress=seen.append)
    assert got.manifest_digest == image.digest
    assert got.layers == (layer_dir(store, image.layers[1]), layer_dir(store, image.layers[0]))
    assert (got.layers[1] / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert any("downloading" in m for m in seen) and seen[-1].startswith("pulled")
    assert sorted(os.listdir(store / "tmp")) == []


def test_pull_by_digest_and_ownership(image: Image, store: Path) -> None:
    got = run_pull(f"{image.ref.rsplit(':', 1)[0]}@{image.digest}", store)
    assert got.manifest_digest == image.digest
    top, base = got.layers
    data = (top / "home/user/data").stat()
    assert (data.st_uid, data.st_gid, data.st_mode & 0o777) == (OFFSET + 1000, OFFSET + 1000, 0o600)
    busybox = (base / "bin/busybox").stat()
    assert (busybox.st_uid, busybox.st_gid, busybox.st_mode & 0o777) == (OFFSET, OFFSET, 0o755)
    assert os.lstat(base / "bin/sh").st_uid == OFFSET


def test_config_is_parsed(image: Image, store: Path) -> None:
    config = run_pull(image.ref, store).config
    assert config == ImageConfig(
        env=(("PATH", "/usr/bin:/bin"), ("GREETING", "hi there")), workdir="/opt/app", user="1000:1000",
        cmd=("-c", "echo hi"), entrypoint=("/bin/sh",), labels={"team": "corral"}, exposed_ports=("8080/tcp",),
    )


def test_layers_work_as_an_overlay_lower_stack(image: Image, store: Path, tmp_path: Path) -> None:
    got = run_pull(image.ref, store)
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(p) for p in got.layers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(merged)], check=True)
    try:
        assert not (merged / "etc/motd").exists(), "the whiteout hides the lower file"
        assert (merged / "etc/keep").read_text() == "kept\n"
        assert sorted(os.listdir(merged / "opt/app")) == ["new"], "the opaque dir hides the lower content"
        assert not (merged / "etc/.wh.motd").exists() and not (merged / "opt/app/.wh..wh..opq").exists()
        script = "busybox cat /etc/keep /opt/app/new; busybox ls /etc"
        ran = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", script], capture_output=True, text=True,
                             check=True)
        assert ran.stdout == "kept\nnew\nkeep\n", ran.stderr
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_index_picks_this_machines_platform(registry: Registry, store: Path) -> None:
    mine = push_image(registry, "team/multi", "mine", base_tars(b"mine"), media_type=OCI_MANIFEST)
    other = push_image(registry, "team/multi", "other", base_tars(b"other"), arch=OTHER_ARCH,
                       media_type=OCI_MANIFEST)
    entries = [(other, OTHER_ARCH), (mine, ARCH)]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": img.digest, "size": len(registry.blob_file(img.digest).read_bytes()),
         "platform": {"os": "linux", "architecture": arch}} for img, arch in entries]}
    push_manifest(registry, "team/multi", "v1", index, OCI_INDEX)
    got = run_pull(f"{registry.host}/team/multi:v1", store)
    assert got.manifest_digest == mine.digest
    assert (got.layers[1] / "etc/keep").read_bytes() == b"kept\nmine"

    only_other = {**index, "manifests": index["manifests"][:1]}
    push_manifest(registry, "team/multi", "foreign", only_other, OCI_INDEX)
    with pytest.raises(PullError, match=f"no linux/{ARCH} image"):
        run_pull(f"{registry.host}/team/multi:foreign", store)


def test_unknown_tag_names_it(image: Image, store: Path) -> None:
    ref = image.ref.rsplit(":", 1)[0] + ":nope"
    with pytest.raises(PullError, match="not found") as err:
        run_pull(ref, store)
    assert ref in str(err.value) and "manifest nope" in str(err.value)


def test_unreachable_registry(store: Path) -> None:
    ref = f"127.0.0.1:{free_port()}/team/img:v1"
    with pytest.raises(PullError, match="unreachable") as err:
        run_pull(ref, store)
    assert ref in str(err.value)


def test_digest_mismatch_is_refused(registry: Registry, store: Path) -> None:
    img = push_image(registry, "team/corrupt", "v1", base_tars(secrets.token_bytes(16)))
    blob = registry.blob_file(img.layers[0])
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes: the registry serves it as is
    blob.write_bytes(bytes(data))
    with pytest.raises(PullError, match=f"digest mismatch for layer {img.layers[0]}"):
        run_pull(img.ref, store)
    assert not (store / img.layers[0].removeprefix("sha256:")).exists()
    assert os.listdir(store / "tmp") == []


def test_tar_not_matching_the_configs_diff_id_is_refused(registry: Registry, store: Path) -> None:
    tars = base_tars(b"diff")
    img = push_image(registry, "team/diff", "v1", tars, diff_ids=[sha(tars[0]), sha(tars[0])])
    with pytest.raises(PullError, match=f"digest mismatch for layer {img.layers[1]}: its tar is {sha(tars[1])}"):
        run_pull(img.ref, store)
    assert not (store / img.layers[1].removeprefix("sha256:")).exists()


def test_blob_larger_than_its_descriptor_is_refused(registry: Registry, store: Path) -> None:
    tars = base_tars(b"size")
    img = push_image(registry, "team/size", "v1", tars, sizes=[100, len(tars[1])])
    with pytest.raises(PullError, match=f"layer {img.layers[0]} is larger than its manifest says"):
        run_pull(img.ref, store)
    assert os.listdir(store / "tmp") == []


def test_hostile_layer_is_refused_and_leaves_nothing(registry: Registry, store: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    evil = tar_bytes(("ok", b"fine", None, 0o644, 0), ("esc", b"", str(victim), 0o777, 0),
                     ("esc/owned", b"pwned", None, 0o644, 0))
    img = push_image(registry, "team/evil", "v1", [base_tars(b"evil")[0], evil])
    with pytest.raises(PullError, match=f"hostile layer {img.layers[1]}.*symlink"):
        run_pull(img.ref, store)
    assert list(victim.iterdir()) == []
    assert not (store / img.layers[1].removeprefix("sha256:")).exists()
    assert os.listdir(store / "tmp") == []


class _Spy:
    """Records the path of every request the pull sends to the (real) registry."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = httpx.AsyncClient.send

        async def send(client: httpx.AsyncClient, request: httpx.Request, **kw: object) -> httpx.Response:
            self.paths.append(request.url.path)
            return await real(client, request, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(httpx.AsyncClient, "send", send)

    def blobs(self) -> list[str]:
        return [p for p in self.paths if "/blobs/" in p]


def test_repull_reuses_stored_layers(image: Image, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    first = run_pull(image.ref, store)
    assert len(spy.blobs()) == 3, spy.paths  # config + 2 layers
    spy.paths.clear()
    seen: list[str] = []
    again = run_pull(image.ref, store, on_progress=seen.append)
    assert again == first
    assert spy.blobs() == [] and len(spy.paths) == 1, spy.paths  # the tag's manifest only
    assert sum("cached" in m for m in seen) == 2
    spy.paths.clear()
    by_digest = run_pull(f"{image.ref.rsplit(':', 1)[0]}@{image.digest}", store)
    assert spy.paths == [], "a stored image pulled by digest needs no network"
    assert by_digest.layers == first.layers


def test_cancelled_pull_leaves_no_partial_layer(image: Image, store: Path) -> None:
    async def go() -> None:
        task: asyncio.Task[PulledImage]

        def progress(msg: str) -> None:
            if "(2/2): unpacking" in msg:
                task.cancel()

        task = asyncio.ensure_future(pull(image.ref, store, on_progress=progress))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert (store / image.layers[0].removeprefix("sha256:") / "fs/bin/busybox").exists()
    assert not (store / image.layers[1].removeprefix("sha256:")).exists()
    assert os.listdir(store / "tmp") == []


def test_killed_pull_leaves_no_visible_layer(image: Image, store: Path) -> None:
    script = (
        "import asyncio, os, signal, sys\n"
        "from pathlib import Path\n"
        "from corral.templates.oci import pull\n"
        "def progress(msg):\n"
        "    if '(1/2): unpacking' in msg:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(pull(sys.argv[1], Path(sys.argv[2]), on_progress=progress))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, image.ref, str(store)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.listdir(store / "tmp") != [], "the killed pull left its work behind"
    assert not (store / image.layers[0].removeprefix("sha256:")).exists()
    got = run_pull(image.ref, store)
    assert (got.layers[1] / "bin/busybox").exists()
    assert os.listdir(store / "tmp") == [], "a later pull removes a dead pull's leftovers"


class _TokenService:
    """A bearer-token service for a registry with token auth: RS256 JWTs signed with ``openssl``.

    It hands an anonymous pull token for ``team/private`` to whoever asks with the right scope and
    service, and counts the asks.
    """

    def __init__(self, work: Path) -> None:
        self.key, self.cert = work / "key.pem", work / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "1", "-subj", "/CN=corral-test-tokens"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.asks: list[dict[str, str]] = []
        self.pull_token = self.sign("team/private", ["pull"])
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                service.asks.append(query)
                ok = query == {"scope": "repository:team/private:pull", "service": "corral-test"}
                body = json.dumps({"token": service.pull_token}).encode() if ok else b"{}"
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def sign(self, repo: str, actions: list[str]) -> str:
        def part(obj: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        now = int(time.time())
        head = part({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]})
        claims = part({"iss": "corral-test-issuer", "sub": "", "aud": "corral-test", "exp": now + 3600,
                       "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8),
                       "access": [{"type": "repository", "name": repo, "actions": actions}]})
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=f"{head}.{claims}".encode(),
                             check=True, capture_output=True).stdout
        return f"{head}.{claims}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_anonymous_bearer_token_auth(store: Path, tmp_path: Path) -> None:
    tokens = _TokenService(tmp_path)
    try:
        auth = (f"auth:\n  token:\n    realm: {tokens.realm}\n    service: corral-test\n"
                f"    issuer: corral-test-issuer\n    rootcertbundle: {tokens.cert}\n")
        catalog = tokens.sign("", [])  # /v2/ only needs a valid token
        with running_registry(auth, token=catalog) as reg:
            reg.client.headers["Authorization"] = f"Bearer {tokens.sign('team/private', ['pull', 'push'])}"
            img = push_image(reg, "team/private", "v1", base_tars(b"private"))
            assert httpx.get(f"http://{reg.host}/v2/team/private/manifests/v1").status_code == 401
            got = run_pull(img.ref, store)
            assert got.manifest_digest == img.digest
            assert (got.layers[1] / "etc/keep").read_bytes() == b"kept\nprivate"
            assert len(tokens.asks) == 1, "one token serves the whole pull"
    finally:
        tokens.close()


def test_template_from_a_registry_image(image: Image) -> None:
    """FROM an image on the loopback registry: pulled, built on, and a sandbox from it runs the image's
    busybox (no bash, no python: the agent brings its own interpreter) as the image's user and workdir."""
    from conftest import make_data_dir, remove_data_dir, run_command, start_server

    data = make_data_dir()
    server = start_server(data)
    try:
        with server.client(timeout=120) as api:
            dockerfile = f"FROM {image.ref}\nUSER root\nRUN echo built-on-busybox > /opt/app/built\nUSER 1000\n"
            r = api.post("/v1/templates", json={"name": "from-registry", "dockerfile": dockerfile})
            assert r.status_code == 202, r.text
            with api.stream("GET", f"/v1/builds/{r.json()['id']}/logs") as s:
                events = [json.loads(line) for line in s.iter_lines() if line]
            assert events[-1]["state"] == "ready", events[-6:]
            assert any("pulled" in e.get("text", "") for e in events)
            config = api.get("/v1/templates/from-registry").json()["config"]
            assert config["workdir"] == "/opt/app" and config["env"]["GREETING"] == "hi there"
            sid = api.post("/v1/sandboxes", json={"template": "from-registry"}).json()["id"]
            ran = run_command(api, sid, "pwd; id -u; cat built new; echo $GREETING; test -e /etc/motd || echo gone")
            assert ran.exit_code == 0, ran.stderr
            assert ran.stdout.split("\n") == ["/opt/app", "1000", "built-on-busybox", "new", "hi there", "gone", ""]
            api.delete(f"/v1/sandboxes/{sid}")
            again = api.post("/v1/templates", json={"name": "from-registry", "dockerfile": dockerfile}).json()
            with api.stream("GET", f"/v1/builds/{again['id']}/logs") as s:
                texts = [json.loads(line).get("text", "") for line in s.iter_lines() if line]
            assert any("cached" in t for t in texts)
    finally:
        server.stop()
        remove_data_dir(data)


def test_e2b_sdk_builds_on_a_registry_image(image: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """The E2B SDK's ``Template.build()`` from an image on the loopback registry: the steps run as
    ``user``, which the build makes first as E2B's base step does (the image has none), in ``sh`` (the
    image has no bash); a sandbox of the template runs as that user in its home."""
    from e2b import Sandbox as E2BSandbox
    from e2b import Template

    from conftest import make_data_dir, remove_data_dir, start_server

    data = make_data_dir()
    server = start_server(data)
    try:
        for name, value in {"E2B_API_URL": server.url, "E2B_SANDBOX_URL": server.url,
                            "E2B_API_KEY": server.api_key}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("E2B_DOMAIN", raising=False)
        template = (Template().from_image(image.ref)
                    .run_cmd("echo built > /home/user/built && id -un > /home/user/who")
                    .run_cmd("id -u > /opt/app/by", user="root"))  # the image names no root
        Template.build(template, "e2b-from-registry")
        sandbox = E2BSandbox.create("e2b-from-registry", timeout=60)
        try:
            ran = sandbox.commands.run("cat /home/user/built /home/user/who /opt/app/by; pwd; id -un")
            assert ran.stdout == "built\nuser\n0\n/home/user\nuser\n", ran
        finally:
            sandbox.kill()
    finally:
        server.stop()
        remove_data_dir(data)

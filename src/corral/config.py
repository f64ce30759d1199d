"""Server settings, read once from the environment (``CORRAL_*``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.1.0"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _switch(name: str) -> bool:
    """An on/off setting, on unless set to off, 0, false or no."""
    return (os.environ.get(name) or "on").lower() not in ("off", "0", "false", "no")


def _pool(raw: str | None) -> dict[str, int] | None:
    """``CORRAL_POOL``: ``off``, or ``template=N,...`` (ready sandboxes kept per template; default base=1)."""
    if raw is None or raw.strip() == "":
        return {"base": 1}
    if raw.strip().lower() in ("off", "0", "none"):
        return None
    sizes: dict[str, int] = {}
    for item in raw.split(","):
        name, sep, count = item.strip().partition("=")
        if not sep or not name or not count.strip().isdigit():
            raise ValueError(f"CORRAL_POOL: expected template=N[,template=N] or off, got {item.strip()!r}")
        sizes[name.strip()] = int(count)
    return sizes


def _host_ca_bundle() -> str | None:
    path = "/etc/ssl/certs/ca-certificates.crt"
    return path if os.path.exists(path) else None


def _backend(name: str) -> str:
    if name not in ("bwrap", "gvisor"):
        raise ValueError(f"CORRAL_BACKEND must be bwrap or gvisor, got {name!r}")
    return name


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know at start. Immutable; pass it down, never read env later."""

    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: Path = Path("/var/lib/corral")
    api_key: str | None = None
    database_url: str | None = None
    templates_path: Path | None = None
    run_dir: Path = Path("/run/corral")
    domain: str | None = None  # with wildcard DNS: sandbox ports answer at {port}-{id}.{domain}
    apt_mirror: str | None = None
    default_timeout: int = 300
    max_timeout: int = 86400
    default_cpu: float = 1.0
    default_memory_mb: int = 512
    default_disk_mb: int = 2048
    max_sandboxes: int = 1000
    subid_base: int = 1_000_000
    network: bool = True  # CORRAL_NETWORK=off: every sandbox gets loopback only
    net_pool: str = "172.16.0.0/12"  # sandbox addresses; each server claims one /net_block_prefix block of it
    net_block_prefix: int = 20
    net_allow_private: str = ""  # private CIDRs the operator opens to sandboxes (comma separated)
    net_dns: str | None = None  # upstream resolver ip[:port]; default: the host's /etc/resolv.conf
    pool: dict[str, int] | None = field(default_factory=lambda: {"base": 1})  # None: no warm pool
    pool_max: int = 8  # ready sandboxes per pool key, whatever the demand
    net_max_connections: int = 0  # per sandbox, concurrent outbound connections; 0 = unlimited
    insecure_registries: tuple[str, ...] = ()  # pulled over plain HTTP (loopback registries always are)
    ca_bundle: str | None = None  # for registries over HTTPS and inside networked sandboxes; default: the host's
    backend: str = "bwrap"  # the default isolation of sandboxes: bwrap or gvisor
    header_timeout: float = 30.0  # seconds a client has to send a request's headers (slowloris)
    agent_zygote: bool = True  # bwrap agents forked from one pre-imported python (off: python per sandbox)
    spare_disks: int = 2  # empty disks of the default size kept mounted, ready for creates (0: none)
    spare_netns: int = 2  # network namespaces kept made and plugged, ready for networked creates (0: none)
    cgroup_favordynmods: bool = True  # remount cgroup2 with favordynmods: fast moves into cgroups (off: leave it)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            host=os.environ.get("CORRAL_HOST") or "127.0.0.1",
            port=_int("CORRAL_PORT", 3000),
            data_dir=Path(os.environ.get("CORRAL_DATA_DIR") or "/var/lib/corral"),
            api_key=os.environ.get("CORRAL_API_KEY") or None,
            database_url=os.environ.get("CORRAL_DATABASE_URL") or None,
            templates_path=Path(os.environ["CORRAL_TEMPLATES_DIR"]) if os.environ.get("CORRAL_TEMPLATES_DIR") else None,
            run_dir=Path(os.environ.get("CORRAL_RUN_DIR") or "/run/corral"),
            domain=os.environ.get("CORRAL_DOMAIN") or None,
            apt_mirror=os.environ.get("CORRAL_APT_MIRROR") or None,
            default_timeout=_int("CORRAL_DEFAULT_TIMEOUT", 300),
            max_timeout=_int("CORRAL_MAX_TIMEOUT", 86400),
            max_sandboxes=_int("CORRAL_MAX_SANDBOXES", 1000),
            network=_switch("CORRAL_NETWORK"),
            net_pool=os.environ.get("CORRAL_NET_POOL") or "172.16.0.0/12",
            net_block_prefix=_int("CORRAL_NET_BLOCK_PREFIX", 20),
            net_allow_private=os.environ.get("CORRAL_NET_ALLOW_PRIVATE") or "",
            net_dns=os.environ.get("CORRAL_NET_DNS") or None,
            net_max_connections=_int("CORRAL_NET_MAX_CONNECTIONS", 0),
            pool=_pool(os.environ.get("CORRAL_POOL")),
            pool_max=_int("CORRAL_POOL_MAX", 8),
            insecure_registries=tuple(
                r.strip() for r in os.environ.get("CORRAL_INSECURE_REGISTRIES", "").split(",") if r.strip()),
            ca_bundle=os.environ.get("CORRAL_CA_BUNDLE") or _host_ca_bundle(),
            backend=_backend(os.environ.get("CORRAL_BACKEND") or "bwrap"),
            header_timeout=_float("CORRAL_HEADER_TIMEOUT", 30.0),
            agent_zygote=_switch("CORRAL_AGENT_ZYGOTE"),
            spare_disks=_int("CORRAL_SPARE_DISKS", 2),
            spare_netns=_int("CORRAL_SPARE_NETNS", 2),
            cgroup_favordynmods=_switch("CORRAL_CGROUP_FAVORDYNMODS"),
        )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    @property
    def templates_dir(self) -> Path:
        return self.templates_path or self.data_dir / "templates"

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def instance(self) -> str:
        """Names this server's sandboxes in host-wide places (cgroups, the run dir): one per data dir."""
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]

    @property
    def runsc_root(self) -> Path:
        """runsc's state dir (``--root``) for this server's gVisor sandboxes."""
        return self.run_dir / "runsc" / self.instance

    @property
    def net_dir(self) -> Path:
        """resolv.conf and the CA bundle given to this server's networked sandboxes."""
        return self.run_dir / f"{self.instance}.net"

    @property
    def mounts_dir(self) -> Path:
        """Where sandbox roots are mounted: a root-owned, searchable dir of this server's own, so the
        unprivileged runtime reaches them wherever the data dir is."""
        return self.run_dir / self.instance

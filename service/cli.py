"""The ``geo-offers`` command: serve, migrate, keys, and imports over the HTTP API."""

from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any

import click

from service.settings import Settings

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_KEY_LABEL = "demo"


@click.group()
def main() -> None:
    """geo-offers: exact store geofences and proximity offers."""


@main.command()
@click.option("--demo", is_flag=True, help="Load demo stores and print an sdk and an admin key.")
@click.option("--host", default=None, help="Bind address (GEO_OFFERS_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (GEO_OFFERS_PORT, default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (GEO_OFFERS_WORKERS).")
def serve(demo: bool, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP service with uvicorn."""
    import uvicorn

    settings = Settings()
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    if workers > 1 and settings.embedded_state:
        raise click.ClickException(
            f"--workers {workers} needs shared device state: set GEO_OFFERS_REDIS_URL. Without "
            "Redis each worker would keep its own copy of every device's state, so the same "
            "visit could be entered twice; run one worker or configure Redis."
        )
    _check_port_free(host, port)
    relay = _relay_process(settings)  # before anything imports prometheus-client
    engine = _migrated_engine(settings)
    if demo:
        _load_demo(engine, host, port)
    engine.dispose()
    if relay is not None:
        relay.start()
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=False,
            # Longer than the idle timeout of whatever sits in front (README, "Deployment").
            timeout_keep_alive=math.ceil(settings.keep_alive_s),
        )
    finally:
        if relay is not None:
            relay.stop()


def _relay_process(settings: Settings) -> Any:
    """On PostgreSQL (unless ``RELAY_PROCESS`` is off): the event relays' own process
    (:mod:`service.events.process`), the HTTP workers told to run none. Its metrics join the
    workers' on ``/metrics`` through prometheus-client's multiprocess files: in the
    operator's ``PROMETHEUS_MULTIPROC_DIR``, else in a fresh directory of this run's."""
    if not (settings.event_relay and settings.relay_process and settings.libpq_url()):
        return None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Read by prometheus-client when first imported: set before anything imports it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _private_metrics_dir()
    from service.events.process import RelayProcess

    relay_env = dict(os.environ)
    os.environ["GEO_OFFERS_EVENT_RELAY"] = "false"  # read by every HTTP worker's Settings()
    return RelayProcess(relay_env)


def _private_metrics_dir() -> str:
    """A new directory for this ``serve``'s metrics files, removed at exit; those a killed
    ``serve`` left behind (its pid is in the name) are removed first."""
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.gettempdir())
    for old in root.glob("geo-offers-metrics-*-*"):
        pid = old.name.split("-")[3]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"geo-offers-metrics-{os.getpid()}-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@main.command()
@click.option("--parent-pid", type=int, default=None, hidden=True)
def relay(parent_pid: int | None) -> None:
    """Run the event relays alone (webhooks, Redis Streams): what `serve` starts beside its
    HTTP workers on PostgreSQL; run it by hand where the API replicas set EVENT_RELAY=false."""
    import uvloop  # as the HTTP workers run on (uvicorn[standard])

    from service.events.process import run_relay
    from service.logs import setup_logging

    settings = Settings()
    setup_logging(settings.log_level)
    uvloop.run(run_relay(settings, parent_pid))


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything is printed or minted when the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror}): another server has it. "
                f"Pick another port with --port (e.g. ./dev demo --port {port + 1}) or "
                "GEO_OFFERS_PORT."
            ) from exc


def _migrated_engine(settings: Settings) -> Any:
    """The database engine, schema up to date; a clear message when the database is down."""
    from sqlalchemy.exc import OperationalError

    from service.db.engine import make_engine
    from service.db.migrate import upgrade

    engine = make_engine(settings)
    try:
        upgrade(engine)
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise click.ClickException(
            f"the database at {where} is unreachable ({type(exc.orig).__name__}); start it or "
            "set GEO_OFFERS_DATABASE_URL"
        ) from exc
    return engine


def _load_demo(engine: Any, host: str, port: int) -> None:
    from service.auth import Role, create_key, revoke_labelled
    from service.campaigns.service import import_campaigns
    from service.fences.service import import_fences

    for name in ("stores.csv", "stores.geojson"):
        with (DEMO_DIR / name).open("rb") as fh:
            res = import_fences(engine, fh, name)
        click.echo(
            f"demo {name}: {res.created} created, {res.updated} updated, {res.unchanged} unchanged",
            err=True,
        )
    camp = import_campaigns(engine, (DEMO_DIR / "campaigns.yaml").read_bytes(), "campaigns.yaml")
    click.echo(
        f"demo campaigns.yaml: {camp['created']} created, {camp['updated']} updated, "
        f"{camp['unchanged']} unchanged",
        err=True,
    )
    # Keys are stored hashed, so the last demo's cannot be shown again: revoke them, so that
    # each start leaves exactly three demo keys valid.
    revoked = revoke_labelled(engine, DEMO_KEY_LABEL)
    if revoked:
        click.echo(f"demo: revoked the {revoked} keys of the previous demo start", err=True)
    sdk = create_key(engine, Role.sdk, DEMO_KEY_LABEL)
    server = create_key(engine, Role.server, DEMO_KEY_LABEL)
    admin = create_key(engine, Role.admin, DEMO_KEY_LABEL)
    base = f"http://{host}:{port}"
    click.echo(
        f"""
demo keys (shown once):
  sdk:    {sdk}
  server: {server}
  admin:  {admin}

try:
  curl -s {base}/v1/locations -H 'Authorization: Bearer {sdk}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"device_id":"demo-phone","lat":40.74172,"lng":-73.98964,"accuracy_m":8,'\
'"timestamp":"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'"}}'
  curl -s '{base}/v1/geofences?limit=5' -H 'Authorization: Bearer {admin}'
  curl -s '{base}/v1/campaigns/welcome/report' -H 'Authorization: Bearer {admin}'
  open {base}/docs
""",
        err=True,
    )


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    engine = _migrated_engine(Settings())
    click.echo(f"schema up to date on {engine.url.render_as_string(hide_password=True)}", err=True)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(["sdk", "server", "admin"]), required=True)
@click.option("--label", default=None, help="A note to tell keys apart.")
def keys_create(role: str, label: str | None) -> None:
    """Create a key and print it, alone, on stdout (it is stored hashed: copy it now)."""
    from service.auth import Role, create_key

    click.echo(create_key(_migrated_engine(Settings()), Role(role), label))


@keys.command("list")
def keys_list() -> None:
    """List keys: id, role, label, created, revoked (never the keys themselves)."""
    from service.auth import list_keys

    for k in list_keys(_migrated_engine(Settings())):
        revoked = k["revoked_at"] or "-"
        click.echo(
            f"{k['id']}  {k['role']:<6}  {k['created_at']}  revoked={revoked}  {k['label'] or ''}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by the id `keys list` shows."""
    from service.auth import revoke_key

    if not revoke_key(_migrated_engine(Settings()), key_id):
        raise click.ClickException(f"no live key with id {key_id}")
    click.echo(f"revoked {key_id}", err=True)


@main.group(name="import")
def import_() -> None:
    """Upload marketer files through the HTTP API."""


class _Progress:
    """A read-only file wrapper that advances a progress bar as httpx streams it."""

    def __init__(self, fh: IO[bytes], bar: Any) -> None:
        self._fh = fh
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._bar.update(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _upload(kind: str, file: Path, url: str, key: str | None, params: dict[str, str]) -> None:
    import httpx
    import orjson
    from tqdm import tqdm

    if not key:
        raise click.ClickException("an admin key is needed: --key or GEO_OFFERS_API_KEY")
    size = file.stat().st_size
    with (
        file.open("rb") as fh,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"uploading {file.name}", file=sys.stderr
        ) as bar,
    ):
        files = {"file": (file.name, _Progress(fh, bar), "application/octet-stream")}
        try:
            resp = httpx.post(
                f"{url.rstrip('/')}/v1/{kind}/import",
                params=params,
                files=files,  # type: ignore[arg-type]
                headers={"Authorization": f"Bearer {key}"},
                timeout=httpx.Timeout(30.0, read=3600.0),
            )
        except httpx.HTTPError as exc:
            raise click.ClickException(f"could not reach {url}: {exc}") from exc
    is_json = resp.headers.get("content-type", "").startswith("application/json")
    body = resp.json() if is_json else {}
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    if resp.status_code >= 400:
        err = body.get("error", {})
        message = str(err.get("message", resp.text[:200]))
        # The API names its query parameter; this command's flag is spelt differently.
        message = message.replace("on_error=skip", "--on-error skip")
        raise click.ClickException(f"HTTP {resp.status_code}: {message}")


_URL = click.option(
    "--url",
    default=lambda: os.environ.get("GEO_OFFERS_URL", "http://127.0.0.1:8000"),
    show_default="GEO_OFFERS_URL or http://127.0.0.1:8000",
)
_KEY = click.option(
    "--key",
    default=lambda: os.environ.get("GEO_OFFERS_API_KEY"),
    help="Admin key (or GEO_OFFERS_API_KEY).",
)
_FILE = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@import_.command("geofences")
@_FILE
@_URL
@_KEY
@click.option("--mode", type=click.Choice(["upsert", "replace"]), default="upsert")
@click.option("--dry-run", is_flag=True)
@click.option("--on-error", type=click.Choice(["abort", "skip"]), default="abort")
def import_geofences(
    file: Path, url: str, key: str | None, mode: str, dry_run: bool, on_error: str
) -> None:
    """Upload a geofence CSV or GeoJSON file, with a progress bar."""
    params = {"mode": mode, "dry_run": str(dry_run).lower(), "on_error": on_error}
    _upload("geofences", file, url, key, params)


@import_.command("campaigns")
@_FILE
@_URL
@_KEY
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
def import_campaigns(file: Path, url: str, key: str | None, dry_run: bool) -> None:
    """Upload a YAML or JSON campaigns file (validated whole; any mistake writes nothing)."""
    _upload("campaigns", file, url, key, {"dry_run": str(dry_run).lower()})


if __name__ == "__main__":
    main()

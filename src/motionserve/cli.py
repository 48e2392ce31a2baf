"""The `motionserve` command: serve, worker, keys, models.

Every flag is also a `MOTIONSERVE_<FIELD>` environment variable (flags win): flags default to None
and only the ones given are passed to `Settings.from_env` as overrides.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Sequence

from pydantic import ValidationError

from motionserve import __version__
from motionserve.config import Settings

log = logging.getLogger("motionserve")


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory: database, files, models (MOTIONSERVE_DATA_DIR; default ./data)")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql://... (default: SQLite in the data dir)")


def _worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-url", help="s3://bucket[/prefix] for files (default: local files in the data dir)")
    p.add_argument("--weights", help="'real', 'tiny' (small random models, for tests) or a JSON checkpoint map")
    p.add_argument("--devices", help="comma-separated, e.g. cuda:0,cuda:1 or cpu (default: every GPU, else cpu)")
    p.add_argument("--preload", help="pipelines to load before taking jobs, comma-separated: t2v, v2v, turbo, svd-lcm "
                   "or endpoint ids (default: none, each loads on its first request)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motionserve", description="Self-hosted video diffusion with the fal model API.")
    parser.add_argument("--version", action="version", version=f"motionserve {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    sub = parser.add_subparsers(dest="command", required=True)

    # `run` parses its own flags, which come from the endpoint's input schema (client_cli.py).
    run = sub.add_parser("run", add_help=False, help="run one request on an endpoint, here or on any fal-compatible "
                         "server (`motionserve run ENDPOINT_ID --help`)")
    run.add_argument("run_args", nargs=argparse.REMAINDER)

    serve = sub.add_parser("serve", help="run the API server (and, by default, workers)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    _store_flags(serve)
    serve.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--tls", choices=("off", "auto"), help="auto: HTTPS with a local CA made in <data-dir>/tls on first start")
    serve.add_argument("--tls-names", help="with --tls auto: names/addresses in the certificate, comma-separated "
                       "(default: localhost,127.0.0.1,::1,<hostname>)")
    _worker_flags(serve)
    serve.add_argument("--no-workers", action="store_true", default=None, help="API only; run `motionserve worker` separately")
    serve.add_argument("--public-url", help="base URL clients use for file URLs, e.g. behind a proxy")
    serve.add_argument("--allow-private-urls", action="store_true", default=None, help="let inputs/webhooks use private addresses")
    serve.add_argument("--max-frames", type=int, help="largest frame count a request may ask for")

    worker = sub.add_parser("worker", help="run model workers only, against the store of a `serve --no-workers`")
    _store_flags(worker)
    _worker_flags(worker)
    worker.add_argument("--allow-private-urls", action="store_true", default=None, help="let inputs use private addresses")
    worker.add_argument("--metrics-port", type=int, help="serve this process's Prometheus metrics on this port")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints KEY_ID:SECRET alone on the last line")
    create.add_argument("--owner", default="default", help="who the key's requests belong to")
    create.add_argument("--label", default="", help="a note to recognise the key by")
    create.add_argument("--admin", action="store_true", help="an admin key: may also read GET /workers and /metrics")
    _store_flags(create)
    _store_flags(keys.add_parser("list", help="list keys (never secrets)"))
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    _store_flags(revoke)

    db = sub.add_parser("db", help="the database schema").add_subparsers(dest="db_command", required=True)
    _store_flags(db.add_parser("upgrade", help="migrate the database to this version's schema"))
    _store_flags(db.add_parser("current", help="print the database's schema revision"))
    downgrade = db.add_parser("downgrade", help="migrate the database back, e.g. before running an older release")
    downgrade.add_argument("revision", help="the revision to go back to ('base': no tables)")
    _store_flags(downgrade)

    models = sub.add_parser("models", help="manage model weights").add_subparsers(dest="models_command", required=True)
    pull = models.add_parser("pull", help="check access to, then download, the checkpoints the configured weights need")
    pull.add_argument("--weights", help="'real' or a JSON checkpoint map")
    pull.add_argument("--data-dir", help="data directory (models are cached under it)")
    pull.add_argument("--endpoint", action="append", metavar="ENDPOINT_ID", help="only what this endpoint needs (repeatable)")

    tls = sub.add_parser("tls", help="the local certificate authority of --tls auto").add_subparsers(dest="tls_command", required=True)
    tls_init = tls.add_parser("init", help="make (or renew) the local CA and server certificate in <data-dir>/tls; print client settings")
    tls_init.add_argument("--data-dir", help="data directory (MOTIONSERVE_DATA_DIR; default ./data)")
    tls_init.add_argument("--names", dest="tls_names", help="names/addresses, comma-separated (default: localhost,127.0.0.1,::1,<hostname>)")
    tls_init.add_argument("--host", help="the address `serve` will bind (for the printed client settings)")
    tls_init.add_argument("--port", type=int, help="the port `serve` will use (for the printed client settings)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags that were given on top."""
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "database_url", "storage_url", "tls_cert", "tls_key", "tls", "tls_names", "weights",
                 "public_url", "allow_private_urls", "max_frames", "metrics_port", "preload"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "devices", None):
        overrides["devices"] = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if getattr(args, "no_workers", None):
        overrides["workers_in_process"] = False
    return Settings.from_env(**overrides)


def _preload_names_known(settings: Settings) -> bool:
    """Checked before anything starts: a typo must not wait for a model process to be reported."""
    from motionserve.endpoints.registry import preload_endpoints

    try:
        preload_endpoints(settings.preload)
    except ValueError as exc:
        print(f"motionserve: bad setting MOTIONSERVE_PRELOAD: {exc}", file=sys.stderr)
        return False
    return True


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from motionserve.api.server import open_store

    store = open_store(settings)
    try:
        if args.keys_command == "create":
            key_id, secret = store.create_key(args.owner, args.label, admin=args.admin)
            print(f"Created key {key_id} for owner {args.owner!r}. The secret is shown only once; use it as FAL_KEY:")
            print(f"{key_id}:{secret}")
        elif args.keys_command == "list":
            for key in store.list_keys():
                created = datetime.fromtimestamp(key.created_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                state = "revoked" if key.revoked else "active"
                role = "admin" if key.admin else "user"
                print(f"{key.key_id}\t{key.owner}\t{role}\t{state}\t{created}\t{key.label}")
        elif args.keys_command == "revoke":
            if not store.revoke_key(args.key_id):
                print(f"No such key: {args.key_id}", file=sys.stderr)
                return 1
            print(f"Revoked {args.key_id}")
    finally:
        store.close()
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from motionserve import migrations

    url = settings.resolved_database_url
    try:
        before = migrations.current(url)
        if args.db_command == "upgrade":
            migrations.upgrade(url)
        elif args.db_command == "downgrade":
            migrations.downgrade(url, args.revision)
    except migrations.SchemaOutOfDate as exc:
        print(f"motionserve: {exc}", file=sys.stderr)
        return 1
    head = migrations.head()
    after = migrations.current(url)
    state = "head" if after == head else f"head is {head}"
    if args.db_command == "current":
        print(f"{after or 'none (empty database)'} ({state})")
    elif before == after:
        print(f"database schema: already at {after or 'none'} ({state})")
    else:
        print(f"database schema: {before or 'none'} -> {after or 'none'} ({state})")
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    """`models pull`: every repository checked first (one line per problem), then the downloads."""
    from motionserve.endpoints.registry import ENDPOINTS
    from motionserve.errors import ModelUnavailableError
    from motionserve.inference.weights import HubAccessError, pull

    groups: set[str] | None = None
    if args.endpoint:
        unknown = [e for e in args.endpoint if e not in ENDPOINTS]
        if unknown:
            print(f"motionserve: unknown endpoint {', '.join(unknown)}; known: {', '.join(ENDPOINTS)}", file=sys.stderr)
            return 2
        groups = {g for e in args.endpoint if (g := ENDPOINTS[e].pipeline_group) is not None}
    try:
        pull(settings, groups=groups)
    except HubAccessError as exc:
        for problem in exc.problems:
            print(f"motionserve: {problem}", file=sys.stderr)
        print("motionserve: nothing was downloaded", file=sys.stderr)
        return 1
    except ModelUnavailableError as exc:
        print(f"motionserve: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _tls(settings: Settings) -> int:
    from motionserve.api.server import print_client_lines, use_local_tls

    print_client_lines(settings, use_local_tls(settings))
    return 0


def _run(argv: Sequence[str]) -> int:
    from motionserve.client_cli import main as run_main

    return run_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # before argparse: the client's options may come before ENDPOINT_ID
        return _run(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args.run_args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"])
            print(f"motionserve: bad setting MOTIONSERVE_{name.upper()}: {error['msg']}", file=sys.stderr)
        return 2
    if args.command in ("serve", "worker") and not _preload_names_known(settings):
        return 2
    if args.command == "serve":
        from motionserve.api.server import serve

        serve(settings)
    elif args.command == "worker":
        from motionserve.api.server import work

        work(settings)
    elif args.command == "keys":
        return _keys(args, settings)
    elif args.command == "db":
        return _db(args, settings)
    elif args.command == "models":
        return _models(args, settings)
    elif args.command == "tls":
        return _tls(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

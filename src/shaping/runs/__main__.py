"""`python -m shaping.runs serve [--host 127.0.0.1] [--port 8080] [--api-key-env SHAPING_API_KEY] [--workers 1]`:
the runs service over the repository it is started in (or `--repo`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from shaping.errors import ShapingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shaping.runs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the runs API")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (default: the current folder)")
    serve.add_argument("--api-key-env", default="SHAPING_API_KEY", help="the environment variable holding the key")
    serve.add_argument("--workers", type=int, default=1, help="DVC queue workers to keep running (dvc queue start -j)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from shaping.config import compose
    from shaping.runs.app import create_app
    from shaping.runs.events import EventHub
    from shaping.runs.notify import Notifier
    from shaping.runs.queue import RunQueue

    try:
        queue = RunQueue(args.repo, workers=args.workers)
        # notify.webhooks as the repository's conf/ has it (each url_env read from this environment)
        notifier = Notifier(compose([], config_dir=queue.root / "conf").notify.webhooks, queue.state_dir)
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not os.environ.get(args.api_key_env):
        logging.getLogger("shaping.runs").warning("%s is not set: the API needs no key", args.api_key_env)
    hub = EventHub(queue, on_event=notifier.publish)
    try:
        # open event streams never end by themselves: a stop waits 5 s for them, then closes them
        app = create_app(queue, args.api_key_env, hub)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

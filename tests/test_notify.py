"""shaping.runs.notify against a real HTTP receiver on 127.0.0.1 (http.server in a thread): order, retries,
at most once across restarts, a dead endpoint, the rate limit, formats, and URLs from the environment
that no log or file holds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from shaping.config import compose
from shaping.config.schema import LIFECYCLE_EVENTS, WebhookConfig, WebhookFormat
from shaping.errors import ShapingError
from shaping.runs.notify import Notifier, body_for, resolve_webhooks

from .conftest import REPO

TOKEN = "T0001/B0002/xoxb-FAKE-SECRET-TOKEN-42"


class Receiver:
    """A webhook endpoint: records every POST (path, JSON body, monotonic time), answers 500 to the first
    `fail_first` of them and 200 to the rest."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts: list[tuple[str, Any]] = []
        self.received: list[tuple[str, Any, float]] = []  # the ones answered 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.attempts.append((self.path, body))
                    ok = len(receiver.attempts) > receiver.fail_first
                    if ok:
                        receiver.received.append((self.path, body, time.monotonic()))
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def ids(self) -> list[str]:
        with self.lock:
            return [body["id"] for _, body, _ in self.received]

    def wait_for(self, count: int, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def event(run: str, kind: str, when: datetime | None = None, **data: Any) -> dict[str, Any]:
    return {
        "id": f"{run}/{kind}",
        "type": kind,
        "v": 1,
        "run": run,
        "time": (when or datetime.now(UTC)).isoformat(),
        "data": data,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_events_arrive_in_order_once_retried_and_filtered(receiver: Any, tmp_path: Path) -> None:
    r = receiver(fail_first=1)
    notifier = Notifier([WebhookConfig(url=f"{r.url}/hook")], tmp_path, backoff_s=0.05)
    try:
        events = [
            event("r1", "run.queued"),
            event("r1", "run.started"),
            event("r1", "stage.started", stage="train"),  # not subscribed (the default: lifecycle only)
            event("r1", "train.progress", step=5, loss=2.1),
            event("r1", "run.succeeded", eval={"tuned_loss": 1.67, "gap_closed": 0.58}),
        ]
        for e in events:
            notifier.publish(e)
        notifier.publish(events[0])  # published again: still once
        assert notifier.flush(4)
        assert r.ids() == ["r1/run.queued", "r1/run.started", "r1/run.succeeded"]
        assert [body for _, body, _ in r.received] == [events[0], events[1], events[4]]  # json: the event itself
        assert {path for path, _, _ in r.received} == {"/hook"}
        assert len(r.attempts) == 4 and r.attempts[0][1]["id"] == "r1/run.queued"  # the 500, then its retry
        notifier.publish(events[1])
        assert notifier.flush(2) and len(r.received) == 3
    finally:
        notifier.close()


def test_a_restart_sends_nothing_again(receiver: Any, tmp_path: Path) -> None:
    r = receiver()
    hooks = [WebhookConfig(url=f"{r.url}/hook", events=["*"])]
    with Notifier(hooks, tmp_path) as first:
        old = [event("r2", "run.queued"), event("r2", "stage.completed", stage="prepare")]  # after its `since`
        for e in old:
            first.publish(e)
        assert first.flush(3)
    assert r.ids() == ["r2/run.queued", "r2/stage.completed"]
    ledger = tmp_path / "webhooks" / f"{hashlib.sha256(f'{r.url}/hook'.encode()).hexdigest()[:16]}.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert set(rows[0]) == {"since"} and rows[1:] == [{"id": "r2/run.queued"}, {"id": "r2/stage.completed"}]

    with Notifier(hooks, tmp_path) as second:  # the service restarted: it re-derives the same events
        for e in [*old, event("r2", "run.started")]:
            second.publish(e)
        assert second.flush(3)
    assert r.ids() == ["r2/run.queued", "r2/stage.completed", "r2/run.started"]


def test_a_new_url_does_not_replay_history(receiver: Any, tmp_path: Path) -> None:
    r = receiver()
    before = datetime.now(UTC) - timedelta(seconds=5)
    with Notifier([WebhookConfig(url=r.url)], tmp_path) as notifier:
        notifier.publish(event("r3", "run.queued", before))
        notifier.publish(event("r3", "run.started", before))
        notifier.publish(event("r3", "run.failed", reason="stage train exited 1"))
        assert notifier.flush(3)
    assert r.ids() == ["r3/run.failed"]


def test_a_dead_endpoint_never_slows_the_caller(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{free_port()}/hooks/{TOKEN}"
    notifier = Notifier([WebhookConfig(url=dead, events=["*"])], tmp_path)  # 5 attempts, 0.5 s backoff
    start = time.perf_counter()
    for i in range(20):
        notifier.publish(event(f"r{i}", "run.queued"))
    assert time.perf_counter() - start < 0.05
    start = time.perf_counter()
    notifier.close(timeout=2)
    assert time.perf_counter() - start < 1.0  # its thread left its backoff at once

    with Notifier([WebhookConfig(url=dead, max_attempts=2)], tmp_path, backoff_s=0.01) as once:
        once.publish(event("r9", "run.failed"))
        assert once.flush(3)
    dropped = [rec.getMessage() for rec in caplog.records if "dropped event r9/run.failed" in rec.getMessage()]
    assert dropped and re.search(r"webhook http://127\.0\.0\.1:\d+: dropped .* after 2 attempts", dropped[0])
    assert not [rec for rec in caplog.records if "FAKE-SECRET" in rec.getMessage()]


def test_slack_and_discord_bodies_are_one_line_summaries(receiver: Any, tmp_path: Path) -> None:
    done = event("r4", "run.succeeded", eval={"tuned_loss": 1.6712, "gap_closed": 0.5833}, stages=["train"])
    assert body_for(done, "slack") == {"text": "run r4: run.succeeded (eval: tuned loss 1.67, gap closed 0.583)"}
    discord = body_for(done, "discord")
    assert discord["content"] == "run r4: run.succeeded (eval: tuned loss 1.67, gap closed 0.583)"
    assert body_for(done, "json") == done
    failed = event("r5", "run.failed", reason="loss <nan> & worse\nat step 3")
    assert body_for(failed, "slack")["text"] == "run r5: run.failed (reason loss &lt;nan&gt; &amp; worse at step 3)"
    assert body_for(event("r6", "run.queued"), "discord")["content"] == "run r6: run.queued"

    r = receiver()
    hooks = [
        WebhookConfig(url=f"{r.url}/slack", format=WebhookFormat.slack),
        WebhookConfig(url=f"{r.url}/discord", format=WebhookFormat.discord),
    ]
    with Notifier(hooks, tmp_path) as notifier:
        notifier.publish({**done, "time": datetime.now(UTC).isoformat()})  # `done` is older than the ledgers
        assert notifier.flush(3)
    got = {path: body for path, body, _ in r.received}
    assert set(got) == {"/slack", "/discord"} and "text" in got["/slack"] and "content" in got["/discord"]


def test_a_url_from_the_environment_is_in_no_log_or_file(
    receiver: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too
    r = receiver(fail_first=1)
    environ = {"SHAPING_TEST_HOOK": f"{r.url}/services/{TOKEN}"}
    hooks = [WebhookConfig(url_env="SHAPING_TEST_HOOK", events=["*"])]
    with Notifier(hooks, tmp_path / "state", environ, backoff_s=0.01) as notifier:
        notifier.publish(event("r7", "run.started"))
        notifier.publish({"type": "run.queued"})  # no id: logged, not sent
        assert notifier.flush(3)
    assert [path for path, _ in r.attempts] == [f"/services/{TOKEN}"] * 2 and r.ids() == ["r7/run.started"]
    secret = "FAKE-SECRET-TOKEN"
    logged = [f"{rec.getMessage()} {rec.args!r} {rec.exc_text or ''}" for rec in caplog.records]
    assert any("$SHAPING_TEST_HOOK" in line for line in logged)  # the retry's debug line names the variable
    assert not [line for line in logged if secret in line]
    files = [f for f in (tmp_path / "state").rglob("*") if f.is_file()]
    assert files and not [f for f in files if secret.encode() in f.read_bytes() or secret in f.name]
    assert secret not in repr(resolve_webhooks(hooks, environ))

    with pytest.raises(
        ShapingError, match=r"notify\.webhooks\[0\]\.url_env: the environment variable SHAPING_TEST_HOOK "
    ):
        Notifier(hooks, tmp_path, {})
    for bad in (f"ftp://127.0.0.1/{TOKEN}", f"127.0.0.1/{TOKEN}"):
        with pytest.raises(ShapingError, match=r"notify\.webhooks\[0\]\.url_env: not an http") as err:
            Notifier(hooks, tmp_path, {"SHAPING_TEST_HOOK": bad})
        assert secret not in str(err.value)


def test_the_rate_limit_waits(receiver: Any, tmp_path: Path) -> None:
    r = receiver()
    with Notifier([WebhookConfig(url=r.url, max_per_minute=2)], tmp_path / "a") as notifier:
        for run in ("r1", "r2", "r3"):
            notifier.publish(event(run, "run.queued"))
        assert r.wait_for(2)
        assert not notifier.flush(1.0) and r.ids() == ["r1/run.queued", "r2/run.queued"]  # the third waits
    # the same limit over a 0.5 s window: the third is sent, not dropped, once the first POST is 0.5 s old
    r = receiver()
    with Notifier([WebhookConfig(url=r.url, max_per_minute=2)], tmp_path / "b", window_s=0.5) as notifier:
        for run in ("r1", "r2", "r3"):
            notifier.publish(event(run, "run.queued"))
        assert notifier.flush(3) and len(r.ids()) == 3
    times = [t for _, _, t in r.received]
    assert times[2] - times[0] >= 0.45 and times[1] - times[0] < 0.3


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (dict(url="http://a.example/h", url_env="HOOK"), r"notify\.webhooks\[1\]: both url and url_env"),
        (dict(), r"notify\.webhooks\[1\]: neither url nor url_env"),
        (dict(url_env="https://hooks.example/T/B/x"), r"notify\.webhooks\[1\]\.url_env: not an environment variable"),
        (dict(url_env="UNSET_HOOK"), r"notify\.webhooks\[1\]\.url_env: the environment variable UNSET_HOOK is not set"),
        (dict(url="hooks.example/h"), r"notify\.webhooks\[1\]\.url: not an http"),
        (dict(url="http://a.example/h", events=["run.done"]), r"notify\.webhooks\[1\]\.events: unknown .*run\.done"),
        (dict(url="http://a.example/h", events=[]), r"notify\.webhooks\[1\]\.events: empty"),
        (dict(url="http://a.example/h", format="teams"), r"notify\.webhooks\[1\]\.format: 'teams'"),
        (dict(url="http://a.example/h", max_per_minute=0), r"notify\.webhooks\[1\]\.max_per_minute"),
        (dict(url="http://a.example/h", timeout_s=0), r"notify\.webhooks\[1\]\.timeout_s"),
        (dict(url="http://one.example/h"), r"notify\.webhooks\[1\]: the same URL as notify\.webhooks\[0\]"),
    ],
)
def test_bad_config_names_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ShapingError, match=message):
        resolve_webhooks([WebhookConfig(url="http://one.example/h"), WebhookConfig(**entry)], {"HOOK": "x"})


def test_the_notify_section_composes() -> None:
    """conf/ has no webhooks; an entry needs only its url or url_env; the commented example spells every field."""
    cfg = compose(["notify.webhooks=[{url_env: SHAPING_SLACK_WEBHOOK, format: slack}]"])
    (hook,) = cfg.notify.webhooks
    assert hook == WebhookConfig(url_env="SHAPING_SLACK_WEBHOOK", format=WebhookFormat.slack)
    assert hook.events == list(LIFECYCLE_EVENTS) and hook.max_per_minute == 30
    assert compose().notify.webhooks == []
    text = (REPO / "conf" / "config.yaml").read_text(encoding="utf-8")
    block = text.split("  # webhooks:\n", 1)[1].split("\n\n", 1)[0]
    (example,) = yaml.safe_load("\n".join(line.replace("  # ", "", 1) for line in block.splitlines()))
    assert set(example) == {f.name for f in dataclasses.fields(WebhookConfig)}
    assert resolve_webhooks([WebhookConfig(**example)], {example["url_env"]: "https://hooks.slack.com/services/x"})

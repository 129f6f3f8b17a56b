"""Webhook notifications: the runs service's events POSTed to the URLs of `notify.webhooks`.

`Notifier.publish(event)` only queues: one daemon thread per URL POSTs that URL's events in order
(JSON, httpx), retries connection errors and non-2xx answers with exponential backoff up to the
entry's `max_attempts` (then drops the event with a warning), and waits rather than drops when the
URL has had `max_per_minute` POSTs in the last minute. A dead endpoint never slows the caller.

At most once per event per URL, across restarts too: a ledger per URL,
`<state_dir>/webhooks/<sha256(url)[:16]>.jsonl`, holds the ids of the events it answered 2xx to. Its
first line, `{"since": <time>}`, is written when the URL is first configured: older events (a restarted
service re-deriving its history) are never sent to it.

A URL may carry a token (Slack, Discord): given by `url_env` it comes from the environment, and no
log line, exception or file holds it. Logs name a URL by scheme and host only.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from shaping.config.schema import WebhookConfig, WebhookFormat
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "run.queued",
    "run.started",
    "stage.started",
    "stage.completed",
    "checkpoint.saved",
    "train.progress",
    "eval.completed",
    "run.succeeded",
    "run.failed",
    "run.cancelled",
)
WINDOW_S = 60.0  # the rate limit's window: at most max_per_minute POSTs to a URL in any WINDOW_S seconds
BACKOFF_INITIAL_S = 0.5  # the wait after a failed attempt, doubled after each one
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0  # a 429's Retry-After is honoured up to this
QUEUE_LIMIT = 10_000  # events waiting for one URL; more are dropped with a warning
SUMMARY_FIELDS = 10  # data fields in a slack/discord summary
SUMMARY_MAX_CHARS = 1_800  # Discord refuses content over 2,000 characters
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def body_for(event: Mapping[str, Any], fmt: WebhookFormat | str) -> dict[str, Any]:
    """The JSON body POSTed for `event`: json = the event itself; slack = {"text": summary};
    discord = {"content": summary} (mentions in it ping no one)."""
    fmt = WebhookFormat(fmt)
    if fmt == WebhookFormat.slack:
        text = summary(event).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return {"text": text}
    if fmt == WebhookFormat.discord:
        return {"content": summary(event), "allowed_mentions": {"parse": []}}
    return dict(event)


def summary(event: Mapping[str, Any]) -> str:
    """One line: `run r4: run.succeeded (eval: tuned loss 1.67, gap closed 0.58)`: the type, the run
    and the first scalar fields of `data` (one level of nesting)."""
    head = f"run {event.get('run') or '?'}: {event.get('type') or 'event'}"
    parts: list[str] = []
    count = 0
    data = event.get("data")
    for name, value in data.items() if isinstance(data, Mapping) else ():
        if count >= SUMMARY_FIELDS:
            break
        if isinstance(value, Mapping):
            inner = []
            for sub, subvalue in value.items():
                if count < SUMMARY_FIELDS and _scalar(subvalue) is not None:
                    inner.append(f"{_words(sub)} {_scalar(subvalue)}")
                    count += 1
            if inner:
                parts.append(f"{_words(name)}: {', '.join(inner)}")
        elif (shown := _scalar(value)) is not None:
            parts.append(f"{_words(name)} {shown}")
            count += 1
    text = f"{head} ({', '.join(parts)})" if parts else head
    return text if len(text) <= SUMMARY_MAX_CHARS else text[: SUMMARY_MAX_CHARS - 1] + "…"


def _words(key: Any) -> str:
    return str(key).replace("_", " ")


def _scalar(value: Any) -> str | None:
    """A summary's rendering of a scalar (None for what it leaves out: containers, null, "")."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        text = " ".join(value.split())
        return text if len(text) <= 120 else text[:119] + "…"
    return None


def url_origin(url: str) -> str:
    """scheme://host[:port]: how a URL is logged (its path and query may carry a token)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


@dataclass(frozen=True)
class ResolvedWebhook:
    """A checked webhook entry: `url` is the resolved (possibly secret) URL, kept out of its repr; `where`
    is how logs name it (`$SHAPING_SLACK_WEBHOOK (https://hooks.slack.com)`)."""

    key: str  # notify.webhooks[i]
    url: str = field(repr=False)
    where: str
    entry: WebhookConfig
    events: frozenset[str]
    format: WebhookFormat


def resolve_webhooks(webhooks: list[WebhookConfig], environ: Mapping[str, str] = os.environ) -> list[ResolvedWebhook]:
    """Check `notify.webhooks` and read each `url_env` from `environ`: a ShapingError names the key
    (`notify.webhooks[0].url_env`) and what to do, and never holds a URL's value."""
    targets: list[ResolvedWebhook] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(webhooks):
        key = f"notify.webhooks[{index}]"
        if entry.url and entry.url_env:
            raise ShapingError(
                f"{key}: both url and url_env are set: keep one (url_env, the name of an environment variable "
                "holding the URL, for a URL that carries a token)"
            )
        if entry.url_env:
            field_key, name = f"{key}.url_env", entry.url_env
            if not ENV_NAME.fullmatch(name):
                raise ShapingError(
                    f"{field_key}: not an environment variable's name (letters, digits and _): url_env names the "
                    "variable that holds the URL (e.g. SHAPING_SLACK_WEBHOOK); the URL itself goes in the environment"
                )
            url = (environ.get(name) or "").strip()
            if not url:
                raise ShapingError(
                    f"{field_key}: the environment variable {name} is not set (or is empty): "
                    f"export {name}=<the webhook's URL> before starting the service, or remove the entry"
                )
            where = f"${name} ({url_origin(url)})"
        elif entry.url:
            field_key, url = f"{key}.url", entry.url.strip()
            where = url_origin(url)
        else:
            raise ShapingError(
                f"{key}: neither url nor url_env is set: give the URL as `url`, or as `url_env` the name of an "
                "environment variable holding it (for a URL that carries a token)"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ShapingError(f"{field_key}: not an http:// or https:// URL with a host")
        if url in seen:
            raise ShapingError(
                f"{key}: the same URL as {seen[url]}: one entry per URL (list every event type it wants in its events)"
            )
        seen[url] = key
        events = list(entry.events or [])
        unknown = [e for e in events if e != "*" and e not in EVENT_TYPES]
        if not events or unknown:
            raise ShapingError(
                f"{key}.events: {'unknown event types ' + str(unknown) if unknown else 'empty'}: "
                f"list some of {', '.join(EVENT_TYPES)}, or ['*'] for every one"
            )
        try:
            fmt = WebhookFormat(entry.format)
        except ValueError:
            raise ShapingError(f"{key}.format: {entry.format!r}: one of json, slack, discord") from None
        for name, value, low in (
            ("max_per_minute", entry.max_per_minute, 1),
            ("max_attempts", entry.max_attempts, 1),
            ("timeout_s", entry.timeout_s, 0),
        ):
            if not isinstance(value, int | float) or value < low or (low == 0 and value <= 0):
                raise ShapingError(f"{key}.{name}: {value!r}: must be {'at least 1' if low else 'above 0'}")
        targets.append(ResolvedWebhook(key, url, where, entry, frozenset(events), fmt))
    return targets


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _Hook:
    """One URL: its queue, its delivery thread, its ledger and its rate limit."""

    def __init__(self, target: ResolvedWebhook, state_dir: Path, window_s: float, backoff_s: float) -> None:
        self.target = target
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.ledger = state_dir / "webhooks" / f"{hashlib.sha256(target.url.encode()).hexdigest()[:16]}.jsonl"
        self.since, self.sent = self._load_ledger()
        self.queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.posts: collections.deque[float] = collections.deque()  # monotonic times of the last POSTs
        self.transport = httpx.HTTPTransport(retries=0)
        self.thread = threading.Thread(target=self._run, name=f"webhook {target.key}", daemon=True)
        self.thread.start()

    def _load_ledger(self) -> tuple[datetime | None, set[str]]:
        since: datetime | None = None
        sent: set[str] = set()
        try:
            lines = self.ledger.read_text(encoding="utf-8").splitlines() if self.ledger.is_file() else []
            for number, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash mid-append
                    log.warning("%s:%d: not JSON, skipped", self.ledger, number)
                    continue
                if isinstance(row, dict) and isinstance(row.get("id"), str):
                    sent.add(row["id"])
                elif isinstance(row, dict) and since is None:
                    since = _parse_time(row.get("since"))
            if since is None and not sent:  # new (or empty): from now on
                now = datetime.now(UTC)
                self.ledger.parent.mkdir(parents=True, exist_ok=True)
                self.ledger.write_text(json.dumps({"since": now.isoformat()}) + "\n", encoding="utf-8")
                since = now
        except OSError as err:
            raise ShapingError(
                f"{self.ledger}: cannot read or write the ledger of {self.target.key} ({self.target.where}): "
                f"{err.strerror or err}"
            ) from None
        return since, sent

    def wants(self, event: Mapping[str, Any], event_id: str, when: datetime | None) -> bool:
        if "*" not in self.target.events and event.get("type") not in self.target.events:
            return False
        if event_id in self.sent:
            return False
        return not (self.since and when and when < self.since)

    def put(self, event_id: str, body: bytes) -> None:
        with self.cond:
            if self.stop.is_set():
                return
            if len(self.queue) >= QUEUE_LIMIT:
                log.warning("webhook %s: %d events waiting, dropped %s", self.target.where, len(self.queue), event_id)
                return
            self.queue.append((event_id, body))
            self.cond.notify_all()

    def flush(self, deadline: float | None) -> bool:
        with self.cond:
            return (
                self.cond.wait_for(
                    lambda: not self.queue or self.stop.is_set(),
                    None if deadline is None else max(0.0, deadline - time.monotonic()),
                )
                and not self.queue
            )

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.queue) or self.stop.is_set())
                if self.stop.is_set():
                    return
                event_id, body = self.queue[0]  # left in the queue until handled: flush() waits for it
            try:
                if event_id not in self.sent:
                    self._deliver(event_id, body)
            except Exception as err:  # never let the thread die: the next events still go
                log.warning("webhook %s: event %s not sent: %s", self.target.where, event_id, type(err).__name__)
            with self.cond:
                if self.queue and self.queue[0][0] == event_id:
                    self.queue.popleft()
                self.cond.notify_all()

    def _deliver(self, event_id: str, body: bytes) -> None:
        attempts = self.target.entry.max_attempts
        problem = ""
        for attempt in range(1, attempts + 1):
            if not self._wait_for_rate():
                return
            delay = min(self.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)
            try:
                status, retry_after = self._post(body)
            except Exception as err:
                problem = f"{type(err).__name__}: {self._scrub(str(err))}"
            else:
                if 200 <= status < 300:
                    self._record(event_id)
                    return
                problem = f"HTTP {status}"
                if retry_after is not None:
                    delay = max(delay, min(retry_after, RETRY_AFTER_MAX_S))
            if attempt < attempts:
                log.debug("webhook %s: %s attempt %d: %s", self.target.where, event_id, attempt, problem)
                if self.stop.wait(delay):
                    return
        log.warning(
            "webhook %s: dropped event %s after %d attempts (last: %s)", self.target.where, event_id, attempts, problem
        )

    def _wait_for_rate(self) -> bool:
        """Wait until a POST keeps the URL within max_per_minute in any window; False if stopped meanwhile."""
        limit = self.target.entry.max_per_minute
        while True:
            now = time.monotonic()
            while self.posts and now - self.posts[0] >= self.window_s:
                self.posts.popleft()
            if len(self.posts) < limit:
                self.posts.append(now)
                return True
            if self.stop.wait(self.posts[0] + self.window_s - now):
                return False

    def _post(self, body: bytes) -> tuple[int, float | None]:
        """POST through the transport, not an httpx.Client: the Client logs every request's full URL."""
        request = httpx.Request(
            "POST",
            self.target.url,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": "shaping-runs"},
            extensions={"timeout": httpx.Timeout(float(self.target.entry.timeout_s)).as_dict()},
        )
        response = self.transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        retry_after = None
        if response.status_code == 429:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except ValueError:
                retry_after = None
        return response.status_code, retry_after

    def _record(self, event_id: str) -> None:
        self.sent.add(event_id)
        try:
            with self.ledger.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"id": event_id}) + "\n")
        except OSError as err:
            log.warning(
                "%s: event %s not recorded (%s): it may be sent again after a restart", self.ledger, event_id, err
            )

    def _scrub(self, text: str) -> str:
        """`text` without the URL, or its path and query, in it."""
        url = self.target.url
        parts = urlsplit(url)
        text = text.replace(url, self.target.where)
        for secret in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.path, parts.query):
            if len(secret) > 1:
                text = text.replace(secret, "/…")
        return text

    def close(self, deadline: float) -> None:
        with self.cond:
            self.stop.set()
            left = len(self.queue)
            self.cond.notify_all()
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if not self.thread.is_alive():  # else a POST is still in flight on it: the daemon thread ends with the process
            self.transport.close()
        if left:
            log.info("webhook %s: closed with %d events not sent", self.target.where, left)


class Notifier:
    """Webhooks for the runs service's events. Construction checks `webhooks` (`notify.webhooks`) and
    reads each `url_env` from `environ`: a ShapingError names the key, so the service refuses to start.

    `window_s` and `backoff_s` are the rate limit's window and the first retry's wait (tests shrink them).
    """

    def __init__(
        self,
        webhooks: list[WebhookConfig],
        state_dir: Path,
        environ: Mapping[str, str] = os.environ,
        *,
        window_s: float = WINDOW_S,
        backoff_s: float = BACKOFF_INITIAL_S,
    ) -> None:
        targets = resolve_webhooks(webhooks, environ)
        self._hooks: list[_Hook] = []
        try:
            for target in targets:
                self._hooks.append(_Hook(target, Path(state_dir), window_s, backoff_s))
        except BaseException:
            self.close(0)
            raise

    def publish(self, event: Mapping[str, Any]) -> None:
        """Queue `event` for every webhook that wants its type and has not had it: never blocks on the
        network, never raises."""
        try:
            event_id = event.get("id")
            if not isinstance(event_id, str) or not event_id:
                log.warning("webhooks: an event without an id (type %s) not sent", event.get("type"))
                return
            when = _parse_time(event.get("time"))
            bodies: dict[WebhookFormat, bytes] = {}
            for hook in self._hooks:
                if not hook.wants(event, event_id, when):
                    continue
                fmt = hook.target.format
                if fmt not in bodies:
                    bodies[fmt] = json.dumps(body_for(event, fmt), default=str).encode()
                hook.put(event_id, bodies[fmt])
        except Exception as err:
            log.warning("webhooks: event %r not queued: %s", event.get("id"), type(err).__name__)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is sent or dropped; False if `timeout` (seconds) ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all([hook.flush(deadline) for hook in self._hooks])

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (events still queued are not sent), waiting for them up to `timeout` s."""
        deadline = time.monotonic() + timeout
        for hook in self._hooks:
            hook.stop.set()
        for hook in self._hooks:
            hook.close(deadline)

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

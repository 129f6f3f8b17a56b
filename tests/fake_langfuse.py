"""A stand-in for the LangFuse Python SDK (v4) at its client objects: the only fake the project allows,
LangFuse being a remote service. It mirrors what shaping.data.traces touches, with the SDK's names
and keyword-only signatures (an argument the SDK does not take is a TypeError here too):

    Langfuse(public_key=, secret_key=, host=, tracing_enabled=, ...).api
        .projects.get() -> Projects(data=[Project(id, name, organization, metadata)])
        .trace.list(page=, limit=, name=, order_by=, fields=, ...) -> Traces(data=[TraceWithDetails], meta=MetaResponse)
        .observations.get_many(trace_id=, type=, fields=, limit=, cursor=, ...) -> ObservationsV2Response(
            data=[ObservationV2], meta=ObservationsV2Meta(cursor))

As the v4 API does, observations' input and output come back as raw JSON strings, traces are paged
(page from 1, meta.total_pages) and observations cursor-paged (meta.cursor None on the last page).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import types
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Organization:
    id: str
    name: str


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    organization: Organization
    metadata: dict[str, Any] = field(default_factory=dict)
    retention_days: int | None = None


@dataclass(frozen=True)
class Projects:
    data: list[Project]


@dataclass(frozen=True)
class MetaResponse:
    page: int
    limit: int
    total_items: int
    total_pages: int


@dataclass(frozen=True)
class TraceWithDetails:
    id: str
    timestamp: dt.datetime
    name: str | None
    html_path: str
    tags: list[str] = field(default_factory=list)
    public: bool = False
    environment: str = "default"
    input: Any = None
    output: Any = None
    session_id: str | None = None
    release: str | None = None
    version: str | None = None
    user_id: str | None = None
    metadata: Any = None
    latency: float | None = None
    total_cost: float | None = None
    observations: list[str] | None = None
    scores: list[str] | None = None


@dataclass(frozen=True)
class Traces:
    data: list[TraceWithDetails]
    meta: MetaResponse


@dataclass(frozen=True)
class ObservationV2:
    id: str
    trace_id: str | None
    start_time: dt.datetime
    end_time: dt.datetime | None
    project_id: str
    parent_observation_id: str | None
    type: str
    name: str | None = None
    level: str | None = "DEFAULT"
    input: str | None = None  # raw strings in the v4 API
    output: str | None = None
    provided_model_name: str | None = None


@dataclass(frozen=True)
class ObservationsV2Meta:
    cursor: str | None = None


@dataclass(frozen=True)
class ObservationsV2Response:
    data: list[ObservationV2]
    meta: ObservationsV2Meta


class UnauthorizedError(Exception):
    """The SDK's langfuse.api.UnauthorizedError (an ApiError: status code and body)."""

    def __init__(self, body: Any) -> None:
        super().__init__(f"status_code: 401, body: {body}")
        self.status_code, self.body = 401, body


class Store:
    """What the fake server holds: one project, its traces and their observations, and the calls made."""

    def __init__(self, project: Project, public_key: str, secret_key: str) -> None:
        self.project, self.keys = project, (public_key, secret_key)
        self.traces: list[TraceWithDetails] = []
        self.observations: list[ObservationV2] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.clients: list[dict[str, Any]] = []
        self.created = 0

    def add_trace(self, name: str, generations: list[tuple[Any, Any]], extra_spans: int = 1) -> str:
        """A trace with a SPAN or two and one GENERATION per (input, output), JSON-encoded as the API sends them."""
        n, self.created = self.created, self.created + 1
        trace_id = f"tr-{n:04d}"
        start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=n)
        ids = []
        for j in range(extra_spans):
            ids.append(f"{trace_id}-span-{j}")
            self.observations.append(
                ObservationV2(ids[-1], trace_id, start, start, self.project.id, None, "SPAN", name="handler")
            )
        for j, (given, said) in enumerate(generations):
            ids.append(f"{trace_id}-gen-{j}")
            at = start + dt.timedelta(seconds=j + 1)
            self.observations.append(
                ObservationV2(
                    ids[-1],
                    trace_id,
                    at,
                    at + dt.timedelta(milliseconds=300),
                    self.project.id,
                    f"{trace_id}-span-0" if extra_spans else None,
                    "GENERATION",
                    name="chat",
                    input=json.dumps(given),
                    output=json.dumps(said),
                    provided_model_name="gpt-4o-mini",
                )
            )
        self.traces.append(
            TraceWithDetails(
                trace_id,
                start,
                name,
                f"/project/{self.project.id}/traces/{trace_id}",
                observations=ids,
                input=json.dumps(generations[0][0]) if generations else None,
            )
        )
        return trace_id


class _Resource:
    def __init__(self, store: Store, authorized: bool) -> None:
        self.store, self.authorized = store, authorized

    def _check(self) -> None:
        """The server answers 401 to keys it does not know (the SDK raises UnauthorizedError)."""
        if not self.authorized:
            raise UnauthorizedError(
                {"message": "Invalid credentials. Confirm that you've configured the correct host."}
            )


class _Projects(_Resource):
    def get(self, *, request_options: Any = None) -> Projects:
        self._check()
        self.store.calls.append(("projects.get", {}))
        return Projects([self.store.project])


class _Trace(_Resource):
    def list(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        user_id: str | None = None,
        name: str | None = None,
        session_id: str | None = None,
        from_timestamp: dt.datetime | None = None,
        to_timestamp: dt.datetime | None = None,
        order_by: str | None = None,
        tags: Any = None,
        version: str | None = None,
        release: str | None = None,
        environment: Any = None,
        fields: str | None = None,
        filter: str | None = None,
        request_options: Any = None,
    ) -> Traces:
        self._check()
        self.store.calls.append(("trace.list", {"page": page, "limit": limit, "name": name, "order_by": order_by}))
        page, limit = page or 1, limit or 50
        matching = [t for t in self.store.traces if name is None or t.name == name]
        if order_by == "timestamp.asc":
            matching.sort(key=lambda t: t.timestamp)
        else:  # the API's default: newest first
            matching.sort(key=lambda t: t.timestamp, reverse=True)
        chunk = matching[(page - 1) * limit : page * limit]
        meta = MetaResponse(page, limit, len(matching), max(1, math.ceil(len(matching) / limit)))
        return Traces(chunk, meta)


class _Observations(_Resource):
    def get_many(
        self,
        *,
        fields: str | None = None,
        expand_metadata: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        parse_io_as_json: bool | None = None,
        name: str | None = None,
        user_id: str | None = None,
        type: str | None = None,
        trace_id: str | None = None,
        level: Any = None,
        parent_observation_id: str | None = None,
        is_root_observation: bool | None = None,
        environment: Any = None,
        from_start_time: dt.datetime | None = None,
        to_start_time: dt.datetime | None = None,
        version: str | None = None,
        filter: str | None = None,
        request_options: Any = None,
    ) -> ObservationsV2Response:
        self._check()
        self.store.calls.append(("observations.get_many", {"trace_id": trace_id, "limit": limit, "cursor": cursor}))
        limit = limit or 50
        matching = [
            o
            for o in self.store.observations
            if (trace_id is None or o.trace_id == trace_id) and (type is None or o.type == type)
        ]
        matching.sort(key=lambda o: o.start_time, reverse=True)  # the API returns newest first
        start = int(cursor or 0)
        chunk = matching[start : start + limit]
        if not fields or "io" not in fields:  # io is a field group of its own
            chunk = [ObservationV2(**{**o.__dict__, "input": None, "output": None}) for o in chunk]
        more = start + limit < len(matching)
        return ObservationsV2Response(chunk, ObservationsV2Meta(str(start + limit) if more else None))


class _API:
    def __init__(self, store: Store, authorized: bool) -> None:
        self.projects = _Projects(store, authorized)
        self.trace = _Trace(store, authorized)
        self.observations = _Observations(store, authorized)


def module(store: Store) -> types.ModuleType:
    """A `langfuse` module whose Langfuse clients read `store` (and refuse keys other than its own)."""

    class Langfuse:
        def __init__(
            self,
            *,
            public_key: str | None = None,
            secret_key: str | None = None,
            base_url: str | None = None,
            host: str | None = None,
            timeout: int | None = None,
            tracing_enabled: bool | None = True,
            **more: Any,
        ) -> None:
            store.clients.append({"host": host, "base_url": base_url, "tracing_enabled": tracing_enabled})
            self.api = _API(store, (public_key, secret_key) == store.keys)

    fake = types.ModuleType("langfuse")
    fake.Langfuse = Langfuse  # type: ignore[attr-defined]
    return fake

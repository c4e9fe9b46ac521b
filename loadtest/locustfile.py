"""Locust scenario that behaves like real SDKs and a real backend against geo-offers.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Two kinds of simulated users:

- ``SdkDevice`` (weight 5): a phone walking (or driving) toward a store, into it, lingering
  or passing through, and away again, pinging ``POST /v1/locations`` every few seconds with
  GPS noise (about 7 % of fixes are coarser than 100 m). Some phones come online with a
  buffer of 5–30 pings and send it as ``POST /v1/locations/batch``, part of it older than
  five minutes; a few pings are retried with the same ``ping_id``, as a flaky network does.
- ``BackendServer`` (weight 1): the app's backend setting user attributes
  (``PATCH /v1/users/{user_id}``) and recording events such as purchases
  (``POST /v1/users/{user_id}/events``) for users that the phones belong to.

Every request is grouped with ``name=`` and checked with ``catch_response=True``: a 200
whose body does not validate against the service's published OpenAPI document (its
``/openapi.json``, read once at the start, as any client would) is a failure, and so is an
answer that breaks a rule the SDK can see (events from a ping coarser than
``max_accuracy_m``, an offer for a ping older than ``offer_max_age_s``, a retry answered
differently). The scenario speaks HTTP only: it imports nothing of the service.

Configuration (environment):

- ``GEO_OFFERS_LOAD_SEED``: seed file from ``python -m loadtest.seed`` with stores and keys
  (default ``loadtest/reports/seed.json``);
- ``GEO_OFFERS_SDK_KEY``, ``GEO_OFFERS_SERVER_KEY``: keys, overriding the seed file's;
- ``GEO_OFFERS_LOAD_STORES``: without a seed file, a CSV with ``lat,lng`` (optionally
  ``store_id``, ``radius_m``), e.g. the stores file that was imported;
- ``GEO_OFFERS_LOAD_PING_INTERVAL``: seconds between a phone's pings, ``min-max`` (2-8);
- ``GEO_OFFERS_LOAD_BACKEND_INTERVAL``: seconds between backend calls, ``min-max`` (2-6);
- ``GEO_OFFERS_LOAD_OFFLINE_P``: share of new phone sessions that start with an offline
  batch (0.08);
- ``GEO_OFFERS_MAX_ACCURACY_M`` (100), ``GEO_OFFERS_OFFER_MAX_AGE_S`` (300): the server's
  settings, for the checks.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from locust import FastHttpUser, events, task

HERE = Path(__file__).resolve().parent
DEFAULT_SEED = HERE / "reports" / "seed.json"
EARTH_R = 6_371_008.7714  # PostGIS's sphere (DESIGN §3)
DEFAULT_RADIUS_M = 45.72  # 50 yards, the service's default
OK_REASON = "offer_issued"


class Contract:
    """The ping answers' schemas, from the service's published OpenAPI document."""

    ping: Draft202012Validator | None = None
    batch: Draft202012Validator | None = None

    @classmethod
    def load(cls, host: str) -> None:
        spec = httpx.get(f"{host.rstrip('/')}/openapi.json", timeout=30).raise_for_status().json()

        def answer(path: str) -> Draft202012Validator:
            ok = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
            return Draft202012Validator({**ok["schema"], "components": spec["components"]})

        cls.ping = answer("/v1/locations")
        cls.batch = answer("/v1/locations/batch")


@events.test_start.add_listener
def _load_contract(environment: Any, **_: Any) -> None:
    Contract.load(environment.host)


# A run-unique prefix: device and user ids never collide with an earlier run's state on
# the same server (which would turn the first pings into out_of_order or capped).
RUN = f"lt{uuid.uuid4().hex[:6]}"


# --- configuration -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    store_id: str
    lat: float
    lng: float
    radius_m: float
    city: str


def _range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = os.environ.get(name)
    if not raw:
        return default
    lo, _, hi = raw.partition("-")
    a, b = float(lo), float(hi or lo)
    if not 0 <= a <= b:
        raise ValueError(f"{name}={raw!r}: want min-max seconds, e.g. 2-8")
    return a, b


def _load() -> tuple[list[Store], dict[str, str | None]]:
    keys: dict[str, str | None] = {"sdk": None, "server": None}
    seed_path = Path(os.environ.get("GEO_OFFERS_LOAD_SEED", DEFAULT_SEED))
    stores: list[Store] = []
    if os.environ.get("GEO_OFFERS_LOAD_SEED") and not seed_path.is_file():
        # Named but missing: say so, rather than walk the demo stores without keys.
        raise RuntimeError(
            f"seed file {seed_path} not found: create it first with python -m loadtest.seed "
            f"--url … --admin-key … --sdk-key … --server-key … --out {seed_path}"
        )
    if seed_path.is_file():
        doc = json.loads(seed_path.read_text(encoding="utf-8"))
        keys.update(doc.get("keys") or {})
        stores = [
            Store(s["store_id"], s["lat"], s["lng"], s["radius_m"], s.get("city", ""))
            for s in doc["stores"]
        ]
    else:
        if not os.environ.get("GEO_OFFERS_LOAD_STORES"):
            raise RuntimeError(
                f"no seed file at {seed_path}: run python -m loadtest.seed, or set "
                "GEO_OFFERS_LOAD_SEED, or GEO_OFFERS_LOAD_STORES to a CSV of stores"
            )
        path = Path(os.environ["GEO_OFFERS_LOAD_STORES"])
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                radius = row.get("radius_m") or DEFAULT_RADIUS_M
                stores.append(
                    Store(
                        row.get("store_id") or f"row-{i}",
                        float(row["lat"]),
                        float(row["lng"]),
                        float(radius),
                        "",
                    )
                )
    keys["sdk"] = os.environ.get("GEO_OFFERS_SDK_KEY") or keys["sdk"]
    keys["server"] = os.environ.get("GEO_OFFERS_SERVER_KEY") or keys["server"]
    if not stores:
        raise RuntimeError(f"no stores to walk to (seed {seed_path})")
    return stores, keys


STORES, KEYS = _load()
BY_CITY: dict[str, list[Store]] = {}
for _s in STORES:
    BY_CITY.setdefault(_s.city, []).append(_s)
PING_INTERVAL = _range("GEO_OFFERS_LOAD_PING_INTERVAL", (2.0, 8.0))
BACKEND_INTERVAL = _range("GEO_OFFERS_LOAD_BACKEND_INTERVAL", (2.0, 6.0))
OFFLINE_P = float(os.environ.get("GEO_OFFERS_LOAD_OFFLINE_P", "0.08"))
MAX_ACCURACY_M = float(os.environ.get("GEO_OFFERS_MAX_ACCURACY_M", "100"))
OFFER_MAX_AGE_S = float(os.environ.get("GEO_OFFERS_OFFER_MAX_AGE_S", "300"))

# Users whose phones are pinging in this process: the backend talks about the same people,
# so attributes and events reach the audience and exception rules of real pings.
ACTIVE_USERS: deque[str] = deque(maxlen=10_000)


# --- movement ------------------------------------------------------------------------


def offset(lat: float, lng: float, bearing_rad: float, dist_m: float) -> tuple[float, float]:
    """The point ``dist_m`` metres from (lat, lng) along ``bearing_rad`` on the sphere."""
    d = dist_m / EARTH_R
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing_rad))
    l2 = l1 + math.atan2(
        math.sin(bearing_rad) * math.sin(d) * math.cos(p1),
        math.cos(d) - math.sin(p1) * math.sin(p2),
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


@dataclass(slots=True)
class Walk:
    """One trip past a store: approach a target point, linger there, leave.

    The target is inside the fence for most trips and just beyond its exit margin for the
    rest (people who pass by without going in). Positions are a function of seconds since
    ``started`` (wall clock), so the ping interval does not change where the phone is.
    """

    store: Store
    target: tuple[float, float]
    bearing_in: float  # from the target toward where the trip starts
    bearing_out: float  # from the target toward where it ends
    approach_m: float
    leave_m: float
    speed_mps: float
    linger_s: float
    started: float

    @classmethod
    def random(cls, store: Store, started: float) -> Walk:
        r = store.radius_m
        miss = random.uniform(0, 0.8 * r) if random.random() < 0.75 else r * 1.25 + 15
        target = offset(store.lat, store.lng, random.uniform(0, 2 * math.pi), miss)
        driving = random.random() < 0.2
        if driving:  # drive-through: fast, no stop
            speed, linger = random.uniform(8, 15), 0.0
        else:
            speed = random.uniform(1.0, 1.7)
            linger = 0.0 if random.random() < 0.3 else random.uniform(20, 600)
        bearing_in = random.uniform(0, 2 * math.pi)
        return cls(
            store=store,
            target=target,
            bearing_in=bearing_in,
            # Mostly straight on, sometimes back the way they came.
            bearing_out=bearing_in + math.pi + random.gauss(0, 0.6),
            approach_m=r + random.uniform(50, 400),
            leave_m=r + random.uniform(50, 400),
            speed_mps=speed,
            linger_s=linger,
            started=started,
        )

    @property
    def duration_s(self) -> float:
        return (self.approach_m + self.leave_m) / self.speed_mps + self.linger_s

    def lingering(self, at: float) -> bool:
        t = at - self.started - self.approach_m / self.speed_mps
        return 0 <= t < self.linger_s

    def position(self, at: float) -> tuple[float, float]:
        t = at - self.started
        t_in = self.approach_m / self.speed_mps
        if t < t_in:
            return offset(*self.target, self.bearing_in, self.approach_m - self.speed_mps * t)
        if t < t_in + self.linger_s:
            return self.target
        # Past the end the phone just keeps walking away (used by old batch pings).
        return offset(*self.target, self.bearing_out, self.speed_mps * (t - t_in - self.linger_s))


def gps_fix(lat: float, lng: float) -> tuple[float, float, float]:
    """A noisy fix of the true position and its reported accuracy in metres."""
    u = random.random()
    if u < 0.75:
        accuracy = random.uniform(3, 20)  # outdoors, clear sky
    elif u < 0.93:
        accuracy = random.uniform(20, 100)  # urban canyon, indoors
    else:
        accuracy = random.uniform(101, 800)  # wifi/cell fallback: must make no events
    # Reported accuracy is roughly a 68 % radius: error ~ half of it per axis.
    err = abs(random.gauss(0, accuracy / 2))
    lat, lng = offset(lat, lng, random.uniform(0, 2 * math.pi), err)
    return lat, lng, round(accuracy, 1)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- answer checks -------------------------------------------------------------------


def ping_answer_problem(doc: Any, sent: dict[str, Any], sent_at: float) -> str | None:
    """What is wrong with one ping answer, or None: its shape against the published schema
    (DESIGN §5), then the rules the phone can check by itself.

    ``sent_at`` is when the request left: the server decided later, so a ping already too
    old for an offer then was too old when decided.
    """
    if Contract.ping is None:
        return "the service's OpenAPI document was not loaded"
    error = next(iter(Contract.ping.iter_errors(doc)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "answer"
        return f"{where}: {error.message[:160]}"
    if sent.get("ping_id") and doc["ping_id"] != sent["ping_id"]:
        return f"ping_id {doc['ping_id']!r} is not the one sent"
    offer, reason = doc["offer"], doc["reason"]
    if (offer is not None) != (reason == OK_REASON):
        return f"reason {reason!r} with offer {'present' if offer else 'null'}"
    # Rules the phone can check by itself (DESIGN §3, §4 step 2).
    if sent["accuracy_m"] > MAX_ACCURACY_M and doc["events"]:
        return f"events from a ping with accuracy {sent['accuracy_m']} m > {MAX_ACCURACY_M}"
    age = sent_at - datetime.fromisoformat(sent["timestamp"].replace("Z", "+00:00")).timestamp()
    # A few seconds of slack for clock skew when the host is another machine.
    if offer is not None and age > OFFER_MAX_AGE_S + 5:
        return f"an offer for a ping {age:.0f} s old (offer_max_age_s {OFFER_MAX_AGE_S:.0f})"
    return None


def _http_problem(resp: Any) -> str:
    if not resp.status_code:  # no HTTP answer at all: refused, reset, timed out
        return f"no answer: {resp.error!r}"
    return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"


def retry_after_s(resp: Any) -> float:
    """How long a 429 asks the phone to wait: the header, else the error details, else 1 s."""
    header = (resp.headers or {}).get("Retry-After")
    if header and header.strip().isdigit():
        return float(header)
    doc = _json(resp)
    details = doc.get("error", {}).get("details", []) if isinstance(doc, dict) else []
    for d in details if isinstance(details, list) else []:
        reason = str(d.get("reason", "")) if isinstance(d, dict) else ""
        if reason.startswith("retry_after_s="):
            return float(reason.partition("=")[2] or 1)
    return 1.0


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except (ValueError, TypeError):
        return None


# --- users ---------------------------------------------------------------------------


class SdkDevice(FastHttpUser):
    """A phone with the app in the foreground: walks past stores and pings as it goes."""

    weight = 5
    walk: Walk
    backoff_s: float = 0.0  # set by a 429: a well-behaved SDK waits before the next ping

    def wait_time(self) -> float:
        lo, hi = PING_INTERVAL
        # SDKs slow down when the phone stands still (distance filters, motion sensors).
        factor = 2.0 if self.walk.lingering(time.time()) else 1.0
        wait = max(random.uniform(lo, hi) * factor, self.backoff_s)
        self.backoff_s = 0.0
        return wait

    def on_start(self) -> None:
        if not KEYS["sdk"]:
            raise RuntimeError("no sdk key: set GEO_OFFERS_SDK_KEY or seed with --sdk-key")
        self.headers = {"Authorization": f"Bearer {KEYS['sdk']}"}
        self._new_session()

    def _new_session(self) -> None:
        """A new phone (or a reinstall): fresh ids, a first trip already under way."""
        self.device_id = f"{RUN}-d-{uuid.uuid4().hex[:16]}"
        self.user_id: str | None = None
        if random.random() < 0.8:  # signed-in users; the rest are anonymous devices
            self.user_id = f"{RUN}-u-{uuid.uuid4().hex[:12]}"
            ACTIVE_USERS.append(self.user_id)
        self.channel = random.choice((None, None, "push", "in_app"))
        self.trips_left = random.randint(1, 4)
        self.last_ts = 0.0
        now = time.time()
        self.store = random.choice(STORES)
        walk = Walk.random(self.store, now)
        # Join the trip at a random point: a population of phones in steady state, some
        # already inside a store, rather than everyone starting 300 m away at once.
        walk.started = now - random.uniform(0, walk.duration_s)
        self.walk = walk
        # This phone comes online with pings it buffered while offline.
        self.offline_batch = random.random() < OFFLINE_P

    def _next_trip(self) -> None:
        self.trips_left -= 1
        if self.trips_left <= 0:
            self._new_session()
            return
        # The next store is in the same city: people shop around where they are.
        self.store = random.choice(BY_CITY.get(self.store.city) or STORES)
        self.walk = Walk.random(self.store, time.time())

    def _ping_body(self, lat: float, lng: float, ts: float) -> dict[str, Any]:
        fix_lat, fix_lng, accuracy = gps_fix(lat, lng)
        body: dict[str, Any] = {
            "device_id": self.device_id,
            "lat": round(fix_lat, 7),
            "lng": round(fix_lng, 7),
            "accuracy_m": accuracy,
            "timestamp": iso(ts),
            "ping_id": uuid.uuid4().hex,
            "speed_mps": round(self.walk.speed_mps, 2),
        }
        if self.user_id:
            body["user_id"] = self.user_id
        if self.channel:
            body["channel"] = self.channel
        return body

    def _failed(self, resp: Any) -> None:
        # A 429 is still a failure (at SDK-like intervals the limiter should not bite),
        # but the phone then backs off as told instead of hammering on.
        if resp.status_code == 429:
            self.backoff_s = retry_after_s(resp)
        resp.failure(_http_problem(resp))

    @task
    def ping(self) -> None:
        if self.offline_batch:
            self.offline_batch = False
            self.send_batch()
            return
        now = time.time()
        if now - self.walk.started > self.walk.duration_s:
            self._next_trip()
        # The fix is a moment old when sent; timestamps still never go backwards.
        ts = max(now - random.uniform(0, 1.5), self.last_ts + 0.001)
        self.last_ts = ts
        body = self._ping_body(*self.walk.position(ts), ts)
        sent_at = time.time()
        with self.client.post(
            "/v1/locations",
            json=body,
            headers=self.headers,
            name="POST /v1/locations",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                self._failed(resp)
                return
            doc = _json(resp)
            problem = ping_answer_problem(doc, body, sent_at)
            if problem:
                resp.failure(f"{problem}: {(resp.text or '')[:200]}")
                return
        if random.random() < 0.02:
            self.retry(body, doc)

    def retry(self, body: dict[str, Any], first: dict[str, Any]) -> None:
        """Resend a ping whose answer was "lost": the service must answer the same."""
        with self.client.post(
            "/v1/locations",
            json=body,
            headers=self.headers,
            name="POST /v1/locations (retry)",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                self._failed(resp)
            elif _json(resp) != first:
                resp.failure(f"retry answered differently: {(resp.text or '')[:200]}")

    def send_batch(self) -> None:
        """Pings buffered while offline (subway, flight mode), sent on reconnect."""
        now = time.time()
        n = random.randint(5, 30)
        span = random.uniform(60, 900)  # how long the phone was offline
        walk = Walk.random(self.store, now - span)
        stamps = sorted(now - span + random.uniform(0, span - 2) for _ in range(n))
        pings = [self._ping_body(*walk.position(ts), ts) for ts in stamps]
        if random.random() < 0.2:
            random.shuffle(pings)  # some SDKs flush several buffers out of order
        self.last_ts = max(self.last_ts, stamps[-1])
        sent_at = time.time()
        with self.client.post(
            "/v1/locations/batch",
            json={"pings": pings},
            headers=self.headers,
            name="POST /v1/locations/batch",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                self._failed(resp)
                return
            doc = _json(resp)
            results = doc.get("results") if isinstance(doc, dict) else None
            if not isinstance(results, list) or len(results) != len(pings):
                resp.failure(f"want {len(pings)} results: {(resp.text or '')[:200]}")
                return
            for i, (sent, got) in enumerate(zip(pings, results, strict=True)):
                problem = ping_answer_problem(got, sent, sent_at)
                if problem:
                    resp.failure(f"results[{i}]: {problem}")
                    return


TIERS = ("bronze", "silver", "silver", "gold", "gold", "platinum", None)
NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiro", "Ines", "José")
EVENTS = (
    ("purchase", 50),
    ("support_ticket_opened", 12),
    ("support_ticket_closed", 12),
    ("billing_issue", 8),
    ("payment_failed", 4),
    ("app_open", 14),
)


class BackendServer(FastHttpUser):
    """The app's backend and POS: user attributes and events, at a lower rate than pings."""

    weight = 1

    def wait_time(self) -> float:
        return random.uniform(*BACKEND_INTERVAL)

    def on_start(self) -> None:
        if not KEYS["server"]:
            raise RuntimeError("no server key: set GEO_OFFERS_SERVER_KEY or seed with --server-key")
        self.headers = {"Authorization": f"Bearer {KEYS['server']}"}
        self.calls = 0

    def _user(self) -> str:
        if ACTIVE_USERS:
            return random.choice(ACTIVE_USERS)
        return f"{RUN}-u-backend-{random.randrange(1000)}"

    @task
    def act(self) -> None:
        # Attributes first (a sign-up), an event next, then a mix: every backend user
        # exercises both routes even in a very short run.
        self.calls += 1
        if self.calls == 1 or (self.calls > 2 and random.random() < 0.4):
            self.patch_attributes(self._user())
        else:
            self.post_event(self._user())

    def patch_attributes(self, user_id: str) -> None:
        # 10 % signed up this week: the audience rule against instant offers matters.
        age_days = random.uniform(0, 7) if random.random() < 0.1 else random.uniform(7, 900)
        attrs: dict[str, Any] = {
            "first_name": random.choice(NAMES),
            "loyalty_tier": random.choice(TIERS),  # None removes the attribute
            "signup_at": iso(time.time() - 86_400 * age_days),
            "location_consent": random.random() >= 0.02,
            "push_opt_in": random.random() < 0.6,
        }
        with self.client.request(
            "PATCH",
            f"/v1/users/{user_id}",
            json=attrs,
            headers=self.headers,
            name="PATCH /v1/users/{user_id}",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(_http_problem(resp))
                return
            doc = _json(resp)
            if not isinstance(doc, dict) or doc.get("user_id") != user_id:
                resp.failure(f"answer is not this user's: {(resp.text or '')[:200]}")
                return
            stored = doc.get("attributes")
            if not isinstance(stored, dict) or stored.get("first_name") != attrs["first_name"]:
                resp.failure(f"attributes not echoed: {(resp.text or '')[:200]}")

    def post_event(self, user_id: str) -> None:
        kind = random.choices([e for e, _ in EVENTS], weights=[w for _, w in EVENTS])[0]
        event: dict[str, Any] = {
            "type": kind,
            "occurred_at": iso(time.time() - random.uniform(0, 120)),
            "event_id": uuid.uuid4().hex,
        }
        if kind == "purchase":
            event["store_id"] = random.choice(STORES).store_id
            event["properties"] = {"amount": round(random.uniform(2, 120), 2), "currency": "USD"}
        with self.client.post(
            f"/v1/users/{user_id}/events",
            json=event,
            headers=self.headers,
            name="POST /v1/users/{user_id}/events",
            catch_response=True,
        ) as resp:
            if resp.status_code != 201:
                resp.failure(_http_problem(resp))
                return
            doc = _json(resp)
            ok = (
                isinstance(doc, dict)
                and doc.get("event_id") == event["event_id"]
                and doc.get("type") == kind
                and doc.get("user_id") == user_id
                and doc.get("duplicate") is False
            )
            if not ok:
                resp.failure(f"event not recorded as sent: {(resp.text or '')[:200]}")

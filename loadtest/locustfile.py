"""Locust scenario for the ping hot path: SDK devices walking around stores.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Needs an sdk key in ``GEO_OFFERS_SDK_KEY`` and stores to walk to: by default the demo stores
(``geo-offers serve --demo``); ``GEO_OFFERS_LOAD_STORES`` may name a CSV with ``lat,lng``
columns instead. Each simulated device picks a store, walks toward it, lingers inside, and
walks away, pinging every few seconds with GPS noise. Requests are grouped by ``name=`` and
a 200 whose body is not a valid ping answer counts as a failure.
"""

from __future__ import annotations

import csv
import math
import os
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

DEMO_STORES = Path(__file__).resolve().parent.parent / "service" / "demo" / "stores.csv"
EARTH_R = 6_371_008.7714
VALID_REASONS = {
    "no_trigger", "no_campaign", "low_accuracy", "stale_ping", "out_of_order",
    "state_unavailable", "offer_issued", "capped",
}  # fmt: skip


def _stores() -> list[tuple[float, float]]:
    path = Path(os.environ.get("GEO_OFFERS_LOAD_STORES", DEMO_STORES))
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return [(float(r["lat"]), float(r["lng"])) for r in csv.DictReader(fh)]


STORES = _stores()


def _offset(lat: float, lng: float, bearing: float, dist_m: float) -> tuple[float, float]:
    d = dist_m / EARTH_R
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing))
    l2 = l1 + math.atan2(
        math.sin(bearing) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


class SdkDevice(FastHttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        key = os.environ.get("GEO_OFFERS_SDK_KEY")
        if not key:
            raise RuntimeError("set GEO_OFFERS_SDK_KEY to an sdk key")
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.device_id = f"load-{uuid.uuid4().hex[:12]}"
        self._new_walk()

    def _new_walk(self) -> None:
        self.store = random.choice(STORES)
        self.bearing = random.uniform(0, 2 * math.pi)
        # Distance to the store along the walk: from 300 m out, through it, to 300 m beyond.
        self.path = [300.0 - 15.0 * i for i in range(41)]

    @task
    def ping(self) -> None:
        if not self.path:
            self._new_walk()
        dist = self.path.pop(0)
        bearing = self.bearing if dist >= 0 else self.bearing + math.pi
        lat, lng = _offset(*self.store, bearing, abs(dist) + random.gauss(0, 5))
        body = {
            "device_id": self.device_id,
            "lat": lat,
            "lng": lng,
            "accuracy_m": abs(random.gauss(12, 8)),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        with self.client.post(
            "/v1/locations", json=body, headers=self.headers, name="POST /v1/locations",
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            try:
                data = resp.json()
                ok = isinstance(data["events"], list) and data["reason"] in VALID_REASONS
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                resp.failure(f"malformed ping answer: {resp.text[:200]}")

"""Seed a geo-offers service for a load test: stores and campaigns through the HTTP API.

    python -m loadtest.seed --url http://127.0.0.1:8000 --admin-key K --stores 1000 \\
        --sdk-key S --server-key B --out loadtest/reports/seed.json

Stores are clustered around a handful of cities (dense downtowns, sparser edges) with a mix
of radii and units, and uploaded as one CSV (``POST /v1/geofences/import``, upsert, so a
rerun is idempotent). Campaigns are uploaded as one YAML file (``POST /v1/campaigns/import``)
with per-user caps, a minimum gap and budgets so offers do not fire on every ping. Note that
a campaigns file's ``policies`` replace the service's current ones.

The output JSON holds the stores (with radii in metres) and the sdk and server keys for the
locustfile; it is written with mode 0600 and never holds the admin key.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

EARTH_R = 6_371_008.7714  # PostGIS's sphere (DESIGN §3); good enough for placing stores
DEFAULT_OUT = Path(__file__).resolve().parent / "reports" / "seed.json"


@dataclass(frozen=True, slots=True)
class City:
    slug: str
    name: str
    lat: float
    lng: float
    timezone: str
    weight: float  # share of the stores


# Inland city centres, so a gaussian spread of a few km stays on land or in inland water
# (the importer flags points at open sea as possibly swapped lat/lng).
CITIES = (
    City("nyc", "New York", 40.75490, -73.98400, "America/New_York", 5),
    City("sf", "San Francisco", 37.77930, -122.41930, "America/Los_Angeles", 3),
    City("chicago", "Chicago", 41.87810, -87.63500, "America/Chicago", 3),
    City("london", "London", 51.51360, -0.13650, "Europe/London", 4),
    City("paris", "Paris", 48.86470, 2.34900, "Europe/Paris", 3),
    City("berlin", "Berlin", 52.52000, 13.40500, "Europe/Berlin", 2),
    City("tokyo", "Tokyo", 35.68120, 139.76710, "Asia/Tokyo", 4),
    City("sydney", "Sydney", -33.87000, 151.20700, "Australia/Sydney", 2),
)

# (radius, radius_unit, metres, share): coffee counters to airports, in every unit the CSV
# format knows, and blanks for the 50-yard default.
RADII = (
    ("", "", 45.72, 25),
    ("50", "yd", 45.72, 10),
    ("20", "m", 20.0, 5),
    ("30", "m", 30.0, 15),
    ("75", "m", 75.0, 15),
    ("150", "m", 150.0, 12),
    ("500", "ft", 152.4, 6),
    ("0.3", "km", 300.0, 6),
    ("0.25", "mi", 402.336, 4),
    ("1", "km", 1000.0, 2),
)

BRANDS = ("Coffee", "Bakery", "Grocer", "Pharmacy", "Books", "Outfitters", "Market", "Deli")


@dataclass(frozen=True, slots=True)
class Store:
    store_id: str
    name: str
    lat: float
    lng: float
    radius_m: float
    city: str
    tags: tuple[str, ...]


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


def make_stores(n: int, rng: random.Random, prefix: str) -> tuple[list[Store], str]:
    """``n`` stores clustered around :data:`CITIES`, and the CSV that describes them."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["store_id", "name", "lat", "lng", "radius", "radius_unit", "tags", "timezone"])
    stores: list[Store] = []
    cities = rng.choices(CITIES, weights=[c.weight for c in CITIES], k=n)
    radii = rng.choices(RADII, weights=[r[3] for r in RADII], k=n)
    for i, (city, (radius, unit, radius_m, _)) in enumerate(zip(cities, radii, strict=True)):
        # Half-normal distance from the centre: dense downtown, a thinning ring around it.
        dist = abs(rng.gauss(0.0, 2500.0))
        lat, lng = offset(city.lat, city.lng, rng.uniform(0, 2 * math.pi), dist)
        lat, lng = round(lat, 6), round(lng, 6)
        tags = [city.slug, "downtown" if dist < 1500 else "neighbourhood"]
        if radius_m >= 150:
            tags.append("mall")
        if radius_m >= 1000:
            tags.append("airport")
        store = Store(
            store_id=f"{prefix}-{city.slug}-{i:06d}",
            name=f"{city.name} {rng.choice(BRANDS)} #{i}",
            lat=lat,
            lng=lng,
            radius_m=radius_m,
            city=city.slug,
            tags=tuple(tags),
        )
        stores.append(store)
        out.writerow(
            [store.store_id, store.name, lat, lng, radius, unit, ";".join(tags), city.timezone]
        )
    return stores, buf.getvalue()


def campaigns_yaml(prefix: str, now: datetime) -> tuple[list[str], str]:
    """A few campaigns covering the decision pipeline, with caps so most pings get no offer."""
    window = {
        "starts_at": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ends_at": (now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    greeting = "Hi {{ first_name | default: 'there' }}"
    doc: dict[str, Any] = {
        "policies": {
            "caps": [{"count": 3, "window": "24h"}],
            "channel_caps": {"push": [{"count": 2, "window": "24h"}]},
            "min_gap": "15m",
            "quiet_hours": "23:00-06:00",
        },
        "campaigns": [
            {
                "id": f"{prefix}-welcome",
                "name": "Welcome offer on entering any store",
                **window,
                "priority": 5,
                "trigger": {"type": "enter"},
                "caps": [{"count": 1, "window": "24h"}, {"count": 2, "window": "7d"}],
                "budget": {"total": 1_000_000, "per_day": 100_000},
                "holdout_pct": 10,
                "offer": {
                    "title": "10% off today",
                    "message": greeting + ", 10% off at {{ store.name }} today.",
                    "value": 10,
                    "coupon": {"type": "unique", "prefix": "LT-"},
                    "expires_in": "2h",
                },
            },
            {
                "id": f"{prefix}-mall-dwell",
                "name": "Loyal shoppers lingering in a mall",
                **window,
                "channel": "in_app",
                "priority": 10,
                "trigger": {"type": "dwell", "dwell_s": 120},
                "targeting": {"tags": ["mall"]},
                "audience": {
                    "include": [
                        {"field": "loyalty_tier", "op": "in", "value": ["gold", "platinum"]}
                    ]
                },
                "caps": [{"count": 1, "window": "7d"}],
                "offer": {
                    "title": "25% off one item",
                    "message": greeting + ", thanks for being {{ loyalty_tier }}.",
                    "value": 25,
                    "coupon": {"type": "unique", "prefix": "MALL-"},
                    "expires_in": "1h",
                },
            },
            {
                "id": f"{prefix}-winback",
                "name": "Win back customers whose payment failed",
                **window,
                "priority": 20,
                "trigger": {"type": "enter"},
                "targeting": {"tags": ["downtown"]},
                "schedule": {
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
                    "hours": ["07:00-22:00"],
                },
                "audience": {
                    "include": [
                        {"field": "days_since_billing_issue", "op": "lte", "value": 30},
                        {"field": "account_age_days", "op": "gte", "value": 7},
                    ],
                    "exclude": [{"field": "open_support_ticket", "op": "eq", "value": True}],
                },
                "exceptions": [{"event": "purchase", "within": "24h"}],
                "caps": [{"count": 1, "window": "7d"}],
                "budget": {"total": 50_000, "per_day": 5_000},
                "rollout_pct": 50,
                "offer": {
                    "title": "We miss you: 15% off",
                    "message": greeting + ", here is 15% off to welcome you back.",
                    "value": 15,
                    "coupon": {"type": "fixed", "code": "COMEBACK15"},
                    "expires_in": "24h",
                },
            },
            {
                "id": f"{prefix}-paused",
                "name": "A paused campaign (still evaluated, never fires)",
                **window,
                "status": "paused",
                "trigger": {"type": "enter"},
                "offer": {"title": "Paused", "message": "never sent", "value": 1},
            },
        ],
    }
    ids = [c["id"] for c in doc["campaigns"]]
    return ids, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _upload(
    client: httpx.Client, path: str, name: str, data: str, params: dict[str, str]
) -> dict[str, Any]:
    resp = client.post(path, params=params, files={"file": (name, data.encode(), "text/plain")})
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        body = {"raw": resp.text[:500]}
    if resp.status_code != 200:
        details = body.get("error", {}).get("details", [])[:10]
        raise SystemExit(
            f"{path}: HTTP {resp.status_code}: {json.dumps(body.get('error', body))[:500]}"
            + "".join(f"\n  {d}" for d in details)
        )
    return body


def seed(
    url: str,
    admin_key: str,
    n_stores: int,
    out: Path,
    *,
    sdk_key: str | None = None,
    server_key: str | None = None,
    prefix: str = "lt",
    random_seed: int = 42,
    with_campaigns: bool = True,
) -> dict[str, Any]:
    """Create the stores and campaigns, write ``out`` and return what was written."""
    rng = random.Random(random_seed)
    stores, csv_text = make_stores(n_stores, rng, prefix)
    now = datetime.now(UTC)
    headers = {"Authorization": f"Bearer {admin_key}"}
    timeout = httpx.Timeout(10.0, read=600.0)  # a big import parses and indexes for a while
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
        fences = _upload(client, "/v1/geofences/import", "stores.csv", csv_text, {"mode": "upsert"})
        campaign_ids: list[str] = []
        campaigns: dict[str, Any] = {}
        if with_campaigns:
            campaign_ids, text = campaigns_yaml(prefix, now)
            campaigns = _upload(client, "/v1/campaigns/import", "campaigns.yaml", text, {})
    doc = {
        "version": 1,
        "url": url,
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "keys": {"sdk": sdk_key, "server": server_key},
        "campaigns": campaign_ids,
        "import": {"geofences": fences, "campaigns": campaigns},
        "stores": [asdict(s) for s in stores],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # The file holds keys: create it private rather than chmod after the fact.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.seed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default=os.environ.get("GEO_OFFERS_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("GEO_OFFERS_ADMIN_KEY"),
        help="admin key for the imports (or GEO_OFFERS_ADMIN_KEY)",
    )
    parser.add_argument("--sdk-key", default=os.environ.get("GEO_OFFERS_SDK_KEY"))
    parser.add_argument("--server-key", default=os.environ.get("GEO_OFFERS_SERVER_KEY"))
    parser.add_argument("--stores", type=int, default=1000, help="number of stores (default 1000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--prefix", default="lt", help="prefix of store and campaign ids")
    parser.add_argument("--random-seed", type=int, default=42, help="same seed, same stores")
    parser.add_argument("--no-campaigns", action="store_true", help="stores only")
    args = parser.parse_args(argv)
    if not args.admin_key:
        parser.error("an admin key is needed: --admin-key or GEO_OFFERS_ADMIN_KEY")
    if args.stores < 1:
        parser.error("--stores must be at least 1")
    doc = seed(
        args.url,
        args.admin_key,
        args.stores,
        args.out,
        sdk_key=args.sdk_key,
        server_key=args.server_key,
        prefix=args.prefix,
        random_seed=args.random_seed,
        with_campaigns=not args.no_campaigns,
    )
    fences = doc["import"]["geofences"]
    by_city: dict[str, int] = {}
    for s in doc["stores"]:
        by_city[s["city"]] = by_city.get(s["city"], 0) + 1
    counts = ", ".join(f"{k} {fences.get(k, 0)}" for k in ("created", "updated", "unchanged"))
    print(f"stores: {len(doc['stores'])} ({counts}); by city: {by_city}")
    print(f"campaigns: {', '.join(doc['campaigns']) or 'none'}")
    keys = [k for k, v in doc["keys"].items() if v]
    print(f"wrote {args.out} (keys: {', '.join(keys) or 'none'}; mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The service on a real 3-node Redis Cluster: device state, caps and budgets stay exact, and
the visit events reach the partition streams, spread over the nodes.

The cluster is the test session's own (tests/redis_cluster.py), started on local ports.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.app import create_app
from service.auth import Role, create_key
from service.events.streams import StreamLayout, entry_event
from service.events.types import Event, EventType
from service.settings import Settings
from service.state.redis_store import device_prefix
from tests.helpers import ago, iso
from tests.service.conftest import _reset_postgis

CAMPAIGNS = b"""
campaigns:
  - id: once
    # One user on many devices at once is a shared account (DESIGN 11): this campaign
    # opts out of trust, the subject here is the cap's atomicity.
    trust_checks: false
    trigger: {type: enter}
    targeting: {store_ids: [c-cap]}
    caps: [{count: 1, window: 24h}]
    offer: {title: Once, message: "Hi"}
  - id: thirty
    trigger: {type: enter}
    targeting: {store_ids: [c-budget]}
    budget: {total: 30}
    offer: {title: Thirty, message: "Hi"}
"""


async def streamed(settings: Settings, type_: EventType, n: int) -> list[tuple[str, str, Event]]:
    """(stream, node, event) of every ``type_`` event in the partition streams, read with
    XREAD (one partition at a time: they are on different slots), once ``n`` are there."""
    client = RedisCluster.from_url(settings.redis_url or "")
    layout = StreamLayout(settings.redis_prefix, settings.stream_partitions)
    try:
        await client.initialize()
        deadline = time.monotonic() + 30
        while True:
            got = []
            for key in layout.events_keys():
                node = client.get_node_from_key(key).name
                for _, entries in await client.xread({key: "0-0"}, count=10_000) or []:
                    got += [(key, node, entry_event(fields)) for _, fields in entries]
            mine = [g for g in got if g[2].type == type_]
            if len(mine) >= n or time.monotonic() > deadline:
                return mine
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


def test_caps_budgets_and_state_on_a_redis_cluster(cluster_url: str, migrated_postgis: str) -> None:
    _reset_postgis(migrated_postgis)
    settings = Settings(
        database_url=migrated_postgis, redis_url=cluster_url, redis_cluster=True,
        redis_prefix="cl", device_burst=1000,
    )  # fmt: skip
    app = create_app(settings)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            admin = {"Authorization": f"Bearer {create_key(app.state.engine, Role.admin)}"}
            sdk = {"Authorization": f"Bearer {create_key(app.state.engine, Role.sdk)}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                stores = (
                    b"store_id,name,lat,lng\nc-cap,A,48.8593,2.3618\nc-budget,B,51.5308,-0.1236\n"
                )
                assert (
                    await c.post(
                        "/v1/geofences/import", files={"file": ("s.csv", stores)}, headers=admin
                    )
                ).status_code == 200
                assert (
                    await c.post(
                        "/v1/campaigns/import", files={"file": ("c.yaml", CAMPAIGNS)}, headers=admin
                    )
                ).status_code == 200
                ts = iso(ago(2))

                def ping(device: str, user: str, lat: float, lng: float, pid: str | None = None):
                    body = {
                        "device_id": device,
                        "user_id": user,
                        "lat": lat,
                        "lng": lng,
                        "accuracy_m": 5,
                        "timestamp": ts,
                    }
                    if pid:
                        body["ping_id"] = pid
                    return c.post("/v1/locations", json=body, headers=sdk)

                capped = await asyncio.gather(
                    *[ping(f"d{i}", "one-user", 48.8593, 2.3618) for i in range(60)]
                )
                budget = await asyncio.gather(
                    *[ping(f"b{i}", f"u{i}", 51.5308, -0.1236) for i in range(90)]
                )
                same = await asyncio.gather(
                    *[ping("same-device", "x", 48.8593, 2.3618, f"p{i}") for i in range(30)]
                )
                # The visit events: XADDed to the inbox by the state script (one slot with
                # the device's keys), then relayed to the partition streams, read by XREAD.
                entered = await streamed(settings, EventType.visit_entered, 151)
        assert all(r.status_code == 200 for r in [*capped, *budget, *same])
        assert sum(1 for r in capped if r.json()["offer"]) == 1
        assert {r.json()["reason"] for r in capped} == {"offer_issued", "capped"}
        assert sum(1 for r in budget if r.json()["offer"]) == 30
        enters = [e for r in same for e in r.json()["events"] if e["type"] == "enter"]
        assert len(enters) == 1
        # One visit.entered per device, each once, in its device's partition, on 3 nodes.
        devices = [*(f"d{i}" for i in range(60)), *(f"b{i}" for i in range(90)), "same-device"]
        assert sorted(e.data["device_id"] for _, _, e in entered) == sorted(devices)
        layout = StreamLayout(settings.redis_prefix, settings.stream_partitions)
        for key, _, e in entered:
            n = layout.partition(e.data["device_id"])
            assert key == layout.events_key(n)
            state = f"{device_prefix(layout, e.data['device_id'])}:state"
            assert key_slot(state.encode()) == key_slot(layout.inbox_key(n).encode())
        assert len({node for _, node, _ in entered}) == 3, "spread over the cluster"

    asyncio.run(run())
    _reset_postgis(migrated_postgis)

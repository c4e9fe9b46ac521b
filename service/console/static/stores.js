// Stores page: the fence map (vector tiles), search, tag filter and a store's details.
"use strict";
(function () {
  const { call, el, makeMap, mapStyle } = window.Console;
  const container = document.getElementById("map");
  const map = makeMap(container);
  window.consoleMap = map;  // for the tests and the curious
  const results = document.getElementById("results");
  const tagSelect = document.getElementById("tag");

  function select(storeId) {
    for (const id of ["selected-line", "selected-point"]) {
      const base = id === "selected-point" ? [["==", ["geometry-type"], "Point"]] : [];
      map.setFilter(id, ["all", ...base, ["==", ["get", "store_id"], storeId]]);
    }
  }

  async function showDetails(storeId) {
    const res = await call("GET", "/console/api/stores/" + encodeURIComponent(storeId));
    const box = document.getElementById("details");
    if (!res.ok) {
      box.hidden = false;
      document.getElementById("d-name").textContent = "Store not found";
      return;
    }
    const s = res.data.store;
    document.getElementById("d-name").textContent = s.name;
    document.getElementById("d-id").textContent = s.store_id;
    document.getElementById("d-shape").textContent = s.kind === "circle"
      ? "circle, radius " + Math.round(s.radius_m * 10) / 10 + " m" : "polygon as drawn";
    const tags = document.getElementById("d-tags");
    tags.replaceChildren(...(s.tags.length ? s.tags.map((t) => el("span", t, "tag")) : [el("span", "none", "muted")]));
    document.getElementById("d-tz").textContent = s.timezone;
    document.getElementById("d-address").textContent = s.address || "—";
    const list = document.getElementById("d-campaigns");
    list.replaceChildren();
    if (!res.data.campaigns.length) list.append(el("li", "none targets this store", "muted"));
    for (const c of res.data.campaigns) {
      const li = el("li");
      const a = el("a", c.name);
      a.href = "/console/campaigns/" + encodeURIComponent(c.id);
      li.append(a, el("span", " " + c.status, "muted small"));
      list.append(li);
    }
    document.getElementById("d-why").href = "/console/why?lat=" + s.lat + "&lng=" + s.lng;
    box.hidden = false;
    select(s.store_id);
    return s;
  }

  async function goTo(item) {
    map.flyTo({ center: [item.lng, item.lat], zoom: item.kind === "circle" && item.radius_m > 2000 ? 12 : 16, speed: 2.5 });
    await showDetails(item.store_id);
  }

  document.getElementById("search-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = document.getElementById("search").value.trim();
    results.replaceChildren();
    if (!q) return;
    const tag = tagSelect.value;
    const res = await call("GET", "/console/api/stores?q=" + encodeURIComponent(q) + (tag ? "&tag=" + encodeURIComponent(tag) : ""));
    const items = (res.data && res.data.items) || [];
    if (!items.length) { results.append(el("li", "No store matches “" + q + "”.", "muted")); return; }
    for (const item of items) {
      const b = el("button");
      b.type = "button";
      b.append(el("span", item.name), el("span", item.store_id, "sid"));
      b.addEventListener("click", () => goTo(item));
      const li = el("li"); li.append(b); results.append(li);
    }
    if (items.length === 1) goTo(items[0]);
  });

  tagSelect.addEventListener("change", () => {
    const style = mapStyle(container, tagSelect.value);
    map.getSource("fences").setTiles(style.sources.fences.tiles);
  });

  map.on("click", (ev) => {
    const hits = map.queryRenderedFeatures(ev.point, { layers: ["clusters", "fence-points", "fence-fill"] });
    if (!hits.length) return;
    const f = hits[0];
    if (f.layer.id === "clusters" && f.properties.count > 1) {
      map.easeTo({ center: f.geometry.coordinates, zoom: Math.min(map.getZoom() + 2.5, 14) });
      return;
    }
    if (f.properties.store_id) showDetails(f.properties.store_id);
  });
  for (const layer of ["clusters", "fence-points", "fence-fill"]) {
    map.on("mouseenter", layer, () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", layer, () => { map.getCanvas().style.cursor = ""; });
  }
})();

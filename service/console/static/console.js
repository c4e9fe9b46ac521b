// Shared by the console's pages: requests with the session's CSRF token, and the map style.
"use strict";
window.Console = (function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function call(method, url, body, raw) {
    const headers = { "X-CSRF-Token": csrf };
    let payload = body;
    if (body !== undefined && !raw) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const res = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) { window.location.href = "/console/sign-in?next=" + encodeURIComponent(location.pathname); }
    return { ok: res.ok, status: res.status, data };
  }

  function el(tag, text, cls) {  // text only: marketer input never becomes markup
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function mapStyle(container, tag) {
    const origin = window.location.origin;
    const tiles = origin + container.dataset.tiles + (tag ? "?tag=" + encodeURIComponent(tag) : "");
    const style = {
      version: 8,
      sources: { fences: { type: "vector", tiles: [tiles], minzoom: 0, maxzoom: 22 } },
      layers: [{ id: "background", type: "background", paint: { "background-color": "#dde6ec" } }],
    };
    if (container.dataset.basemap) {
      style.sources.basemap = { type: "raster", tiles: [container.dataset.basemap], tileSize: 256,
                                attribution: container.dataset.attribution || "" };
      style.layers.push({ id: "basemap", type: "raster", source: "basemap" });
    } else {
      // No base map: land outlines (Natural Earth 1:110m, served by the service) and a
      // graticule every 10° give a sense of place.
      style.sources.land = { type: "geojson", data: { type: "FeatureCollection", features: [] } };
      style.layers.push(
        { id: "land", type: "fill", source: "land", paint: { "fill-color": "#f6f5f0" } },
        { id: "coast", type: "line", source: "land", paint: { "line-color": "#c3cbc9", "line-width": 0.8 } },
      );
      const lines = [];
      for (let lng = -180; lng <= 180; lng += 10) lines.push([[lng, -85], [lng, 85]]);
      for (let lat = -80; lat <= 80; lat += 10) lines.push([[-180, lat], [180, lat]]);
      style.sources.graticule = { type: "geojson", data: { type: "Feature", properties: {},
        geometry: { type: "MultiLineString", coordinates: lines } } };
      style.layers.push({ id: "graticule", type: "line", source: "graticule",
        paint: { "line-color": "#d4d8cf", "line-width": 1 } });
    }
    style.layers.push(
      { id: "clusters", type: "circle", source: "fences", "source-layer": "clusters",
        paint: { "circle-color": ["step", ["get", "count"], "#4f8fdc", 10, "#2b6cc4", 100, "#1b4f99", 1000, "#0f3470"],
                 "circle-radius": ["step", ["get", "count"], 6, 2, 11, 10, 14, 100, 17, 1000, 21, 10000, 25],
                 "circle-stroke-color": "#fff", "circle-stroke-width": 1.5, "circle-opacity": 0.9 } },
      { id: "fence-fill", type: "fill", source: "fences", "source-layer": "fences",
        filter: ["==", ["geometry-type"], "Polygon"],
        paint: { "fill-color": ["match", ["get", "kind"], "polygon", "#7a4fd0", "#1c6dd0"], "fill-opacity": 0.22 } },
      { id: "fence-line", type: "line", source: "fences", "source-layer": "fences",
        filter: ["==", ["geometry-type"], "Polygon"],
        paint: { "line-color": ["match", ["get", "kind"], "polygon", "#5a32a8", "#1552a0"], "line-width": 1.5 } },
      { id: "fence-points", type: "circle", source: "fences", "source-layer": "fences",
        filter: ["==", ["geometry-type"], "Point"],
        paint: { "circle-color": "#1c6dd0", "circle-radius": 5, "circle-stroke-color": "#fff", "circle-stroke-width": 1.5 } },
      { id: "selected-line", type: "line", source: "fences", "source-layer": "fences",
        filter: ["==", ["get", "store_id"], ""],
        paint: { "line-color": "#f0b400", "line-width": 3 } },
      { id: "selected-point", type: "circle", source: "fences", "source-layer": "fences",
        filter: ["all", ["==", ["geometry-type"], "Point"], ["==", ["get", "store_id"], ""]],
        paint: { "circle-color": "#f0b400", "circle-radius": 8, "circle-stroke-color": "#17202e", "circle-stroke-width": 2 } },
    );
    return style;
  }

  function makeMap(container, options) {
    maplibregl.setWorkerUrl(container.dataset.worker);
    const map = new maplibregl.Map(Object.assign({
      container, style: mapStyle(container, ""), center: [-40, 30], zoom: 1.3,
      attributionControl: container.dataset.basemap ? {} : false, maxZoom: 20,
    }, options || {}));
    map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
    map.addControl(new maplibregl.ScaleControl({ maxWidth: 120, unit: "metric" }), "bottom-right");
    if (!container.dataset.basemap && container.dataset.land && window.topojson) {
      fetch(container.dataset.land).then((r) => r.json()).then((topo) => {
        const land = window.topojson.feature(topo, topo.objects.land);
        const put = () => map.getSource("land").setData(land);
        if (map.getSource("land")) put(); else map.once("load", put);
      });
    }
    // Cluster counts as HTML labels: no glyph (font) files needed, so nothing to download.
    const labels = [];
    function drawLabels() {
      labels.splice(0).forEach((m) => m.remove());
      // Biggest clusters first; a label too close to one already placed is left out.
      const placed = [];
      const found = map.queryRenderedFeatures({ layers: ["clusters"] })
        .filter((f) => f.properties.count > 1)
        .sort((a, b) => b.properties.count - a.properties.count)
        .slice(0, 400);
      for (const f of found) {
        const n = f.properties.count;
        const p = map.project(f.geometry.coordinates);
        if (placed.some((q) => Math.abs(q.x - p.x) < 26 && Math.abs(q.y - p.y) < 16)) continue;
        placed.push(p);
        const node = el("div", n >= 10000 ? Math.round(n / 1000) + "k" : n >= 1000 ? (n / 1000).toFixed(1) + "k" : n, "cluster-label");
        labels.push(new maplibregl.Marker({ element: node }).setLngLat(f.geometry.coordinates).addTo(map));
      }
    }
    map.on("idle", drawLabels);
    return map;
  }

  return { call, el, mapStyle, makeMap, csrf };
})();

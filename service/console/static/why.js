// "Why no offer?": click the map to put the ping's point in the form.
"use strict";
(function () {
  const { makeMap } = window.Console;
  const container = document.getElementById("map");
  const lat = document.getElementById("lat");
  const lng = document.getElementById("lng");
  const start = lat.value && lng.value ? { center: [Number(lng.value), Number(lat.value)], zoom: 16 } : {};
  const map = makeMap(container, start);
  window.consoleMap = map;
  let marker = null;
  function place(lngLat) {
    if (!marker) marker = new maplibregl.Marker({ color: "#d0341c" });
    marker.setLngLat(lngLat).addTo(map);
  }
  if (start.center) place(start.center);
  map.on("click", (ev) => {
    lat.value = ev.lngLat.lat.toFixed(6);
    lng.value = ev.lngLat.lng.toFixed(6);
    place(ev.lngLat);
  });
})();

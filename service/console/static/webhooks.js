// Webhooks pages: the event-type ticks and the "every type" choice agree; the secret page's
// Copy button (where the browser allows the clipboard).
"use strict";
(function () {
  const form = document.getElementById("webhook-form");
  if (form) {
    const ticks = form.querySelectorAll("input[name=events]");
    const every = form.querySelector("input[name=scope][value=all]");
    const some = form.querySelector("input[name=scope][value=some]");
    // Ticking a type means "only these"; "every type" clears the ticks.
    ticks.forEach((t) => t.addEventListener("change", () => { if (t.checked) some.checked = true; }));
    every.addEventListener("change", () => { if (every.checked) ticks.forEach((t) => { t.checked = false; }); });
  }
  const button = document.getElementById("copy");
  if (!button || !navigator.clipboard) return;
  const field = document.getElementById(button.dataset.target);
  const note = document.getElementById("copied");
  button.hidden = false;
  field.addEventListener("focus", () => field.select());
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(field.value);
      note.textContent = "Copied to the clipboard.";
    } catch (e) {
      field.select();
      note.textContent = "Select the secret and copy it (Ctrl+C).";
    }
  });
})();

// The signing secret page: a Copy button (where the browser allows the clipboard).
"use strict";
(function () {
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

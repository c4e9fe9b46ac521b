// Imports page: send a file in parts (with progress), check it (dry run), then apply it.
"use strict";
(function () {
  const { call, el } = window.Console;
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  const message = document.getElementById("message");
  const progress = document.getElementById("progress");
  const bar = document.getElementById("progress-bar");
  const label = document.getElementById("progress-label");
  const result = document.getElementById("result");
  const applyBtn = document.getElementById("apply");
  const skipBtn = document.getElementById("apply-skip");
  let upload = null;

  const choice = (name) => document.querySelector('input[name="' + name + '"]:checked').value;
  function say(text, kind) { message.textContent = text; message.className = kind || ""; }
  function showProgress(text, done, total) {
    progress.hidden = false;
    label.textContent = text;
    bar.value = total ? Math.round((100 * done) / total) : 0;
  }
  function syncMode() { document.getElementById("mode-field").hidden = choice("kind") !== "geofences"; }
  document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", syncMode));
  syncMode();

  // The drop zone is the file input's label: a click, or Enter / Space on the (visually
  // hidden, focusable) input, opens the browser's own file chooser.
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault(); drop.classList.remove("over");
    if (ev.dataTransfer.files.length) start(ev.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) start(input.files[0]); input.value = ""; });
  document.getElementById("again").addEventListener("click", () => {
    result.hidden = true; upload = null; say(""); input.focus();
  });

  async function start(file) {
    result.hidden = true;
    say("");
    const kind = choice("kind");
    const created = await call("POST", "/console/api/uploads", { kind, filename: file.name, size: file.size });
    if (!created.ok) { progress.hidden = true; return fail(created); }
    upload = Object.assign(created.data, { mode: choice("mode") });
    const size = upload.chunk_bytes;
    for (let seq = 0, off = 0; off < file.size; seq++, off += size) {
      showProgress("Sending " + file.name + "…", off, file.size);
      const part = await file.slice(off, off + size).arrayBuffer();
      let sent = null;
      for (let attempt = 0; attempt < 3 && !(sent && sent.ok); attempt++) {
        sent = await call("PUT", "/console/api/uploads/" + upload.id + "/chunks/" + seq, part, true);
      }
      if (!sent.ok) { progress.hidden = true; return fail(sent); }
    }
    await run(false);
  }

  async function run(apply, onError) {
    const verb = apply ? "Applying" : "Checking";
    showProgress(verb + " " + upload.filename + "…", 0, upload.size);
    applyBtn.disabled = skipBtn.disabled = true;
    const timer = setInterval(async () => {
      const p = await call("GET", "/console/api/uploads/" + upload.id + "/progress");
      if (p.ok && p.data.done) showProgress(verb + " " + upload.filename + "…", p.data.done, p.data.size);
    }, 700);
    const path = "/console/api/uploads/" + upload.id + (apply ? "/apply" : "/check");
    const res = await call("POST", path, { mode: upload.mode, on_error: onError || "abort" });
    clearInterval(timer);
    progress.hidden = true;
    applyBtn.disabled = skipBtn.disabled = false;
    if (!res.ok) return fail(res, apply);
    show(res.data);
  }

  function fail(res, applying) {
    const err = (res.data && res.data.error) || { message: "The request failed (HTTP " + res.status + ").", details: [] };
    say(err.message, "error");
    if (err.details && err.details.length && err.details[0].line !== undefined) {
      show({ created: 0, updated: 0, unchanged: 0, deleted: 0, skipped: err.details.length,
             errors: err.details, kind: upload ? upload.kind : "geofences", failed: true });
    }
    if (applying === undefined) return;
  }

  function show(r) {
    result.hidden = false;
    const errors = r.errors || [];
    const nErrors = r.kind === "campaigns" ? errors.length : (r.skipped || errors.length);
    document.getElementById("result-title").textContent = r.failed ? "Problems found"
      : r.applied ? "Applied: " + r.filename : "Check of " + r.filename + " (nothing written yet)";
    for (const k of ["created", "updated", "unchanged", "deleted"]) {
      document.getElementById("n-" + k).textContent = (r[k] || 0).toLocaleString();
    }
    document.getElementById("n-errors").textContent = nErrors.toLocaleString();
    const wrap = document.getElementById("errors-wrap");
    const body = document.querySelector("#errors tbody");
    body.replaceChildren();
    wrap.hidden = errors.length === 0;
    document.getElementById("errors-key").textContent = r.kind === "campaigns" ? "campaign" : "store id";
    document.getElementById("errors-note").textContent = nErrors > errors.length
      ? "The first " + errors.length.toLocaleString() + " of " + nErrors.toLocaleString() + " are listed." : "";
    for (const e of errors) {
      const tr = el("tr");
      tr.append(el("td", e.line == null ? "" : e.line), el("td", r.kind === "campaigns" ? (e.campaign || "") : (e.store_id || "")),
                el("td", e.field || ""), el("td", e.reason || ""));
      body.append(tr);
    }
    const good = (r.created || 0) + (r.updated || 0) + (r.unchanged || 0);
    applyBtn.hidden = r.applied || r.failed || nErrors > 0;
    skipBtn.hidden = r.applied || r.failed || nErrors === 0 || good === 0 || r.kind === "campaigns";
    if (r.applied) {
      say("Done: " + r.filename + " is applied.", "notice");
    } else if (!r.failed && nErrors === 0) {
      say("The file is valid. Press Apply to write it.", "notice");
    } else if (!r.failed) {
      say(nErrors.toLocaleString() + " row(s) have errors. Fix them and drop the file again, or apply the good rows only.", "error");
    }
    result.scrollIntoView({ block: "nearest" });
  }

  applyBtn.addEventListener("click", () => run(true, "abort"));
  skipBtn.addEventListener("click", () => run(true, "skip"));
})();

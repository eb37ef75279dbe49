// Kiln dashboard: the only script. Pages work without it; it adds live job status
// (EventSource on the job's event stream), the team's live numbers and job rows
// (EventSource on /events), and the live cost estimate.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-job-events]");
  if (live && window.EventSource) {
    const status = document.getElementById("job-status");
    const events = new EventSource(live.dataset.jobEvents);
    window.addEventListener("pagehide", () => events.close());
    // A model job's step is done: mark it, and the next one as running.
    events.addEventListener("step", (event) => {
      const done = Array.from(document.querySelectorAll("#job-steps [data-step]")).find((li) => li.dataset.step === event.data);
      if (!done) { return; }
      done.className = "step step-done";
      done.querySelector(".step-state").textContent = "done";
      const next = done.nextElementSibling;
      if (next && next.classList.contains("step-waiting")) {
        next.className = "step step-running";
        next.querySelector(".step-state").textContent = "running";
      }
    });
    events.addEventListener("attempt", (event) => {
      const attempt = document.getElementById("job-attempt");
      if (attempt) { attempt.textContent = event.data; }
    });
    events.addEventListener("status", (event) => {
      status.textContent = event.data;
      status.className = "status status-" + event.data;
      if (["completed", "failed", "cancelled"].includes(event.data)) {
        events.close();
        // Images, credits and the cancel button follow from the final status: take
        // them from a fresh copy of this page rather than reloading it.
        fetch(location.href, { credentials: "same-origin" })
          .then((response) => response.text())
          .then((html) => {
            const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("job-live");
            if (fresh) { fresh.removeAttribute("data-job-events"); live.replaceWith(fresh); }
          });
      }
    });
  }
  // The team's live stream on every signed-in page: the header's credits, the
  // overview's cards, and the rows of listed jobs that have not ended.
  const summary = document.getElementById("team-summary");
  if (summary && window.EventSource) {
    // At most 25 (a page of the history): the stream follows no more.
    const follow = Array.from(document.querySelectorAll("tr[data-job-id][data-live]")).map((row) => row.dataset.jobId).slice(0, 25);
    const team = new EventSource("/events" + (follow.length ? "?jobs=" + encodeURIComponent(follow.join(",")) : ""));
    // A page left (even one the browser keeps to go back to) holds no connection:
    // browsers open only a few per site, and a held stream would starve the next page.
    window.addEventListener("pagehide", () => team.close());
    team.addEventListener("team", (event) => {
      const news = JSON.parse(event.data);
      summary.textContent = news.summary;
      for (const id of ["available", "reserved", "running", "queued"]) {
        const card = document.getElementById(id);
        if (card) { card.textContent = news[id]; }
      }
    });
    team.addEventListener("job", (event) => {
      const news = JSON.parse(event.data);
      document.querySelectorAll("tr[data-job-id]").forEach((row) => {
        if (row.dataset.jobId !== news.job_id) { return; }
        const fresh = document.createElement("tbody");
        fresh.innerHTML = news.html.trim();
        if (fresh.firstElementChild) { row.replaceWith(fresh.firstElementChild); }
      });
    });
  }
  // The operator console's live sections: their server-rendered HTML again, by
  // server-sent events (`charts` and `fragment` events replace the section's content).
  document.querySelectorAll("[data-live]").forEach((section) => {
    if (!window.EventSource) { return; }
    const events = new EventSource(section.dataset.live);
    const replace = (event) => { if (event.data) { section.innerHTML = event.data; } };
    events.addEventListener("charts", replace);
    events.addEventListener("fragment", replace);
  });
  const form = document.querySelector("form[data-estimate]");
  if (form) {
    const output = document.getElementById("estimate");
    // Answers can come back out of order: only the latest request's is shown.
    let asked = 0;
    const update = () => {
      const mine = ++asked;
      fetch(form.dataset.estimate, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" })
        .then((response) => response.ok ? response.text() : null)
        .then((text) => { if (text !== null && mine === asked) output.innerHTML = text; });
    };
    form.addEventListener("change", update);
    let typing;
    form.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(update, 300); });
    update();
  }
});

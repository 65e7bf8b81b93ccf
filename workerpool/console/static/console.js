// The console's only script: dialogs, the slug preview, confirmations and live logs.
// Every value from the server is put in the page as text (textContent), never as markup.
"use strict";

function slugify(name) {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
}

function showState(text) {
  const state = document.getElementById("step-state");
  if (state) {
    state.textContent = text;
    state.className = "state " + text.toLowerCase();
  }
}

function follow(pre) {
  const status = document.getElementById("log-status");
  const source = new EventSource(pre.dataset.source);
  source.onmessage = (event) => {
    const line = JSON.parse(event.data);
    const span = document.createElement("span");
    if (line.s === "stderr") span.className = "stderr";
    span.textContent = line.x + "\n";
    pre.appendChild(span);
    pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("end", (event) => {
    source.close();
    pre.dataset.ended = JSON.parse(event.data);
    if (status) status.textContent = "ended: " + JSON.parse(event.data);
    showState(JSON.parse(event.data));
    const cancel = document.getElementById("cancel-form");
    if (cancel) cancel.remove();
  });
  source.addEventListener("state", (event) => showState(JSON.parse(event.data)));
  source.addEventListener("outage", (event) => {
    if (status) status.textContent = JSON.parse(event.data);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-opens]").forEach((button) => {
    button.addEventListener("click", () => document.getElementById(button.dataset.opens).showModal());
  });
  document.querySelectorAll("[data-closes]").forEach((button) => {
    button.addEventListener("click", () => document.getElementById(button.dataset.closes).close());
  });
  document.querySelectorAll("dialog[data-open]").forEach((dialog) => {
    dialog.close();
    dialog.showModal();
  });
  const name = document.getElementById("pool-name");
  const slug = document.getElementById("pool-slug");
  if (name && slug) name.addEventListener("input", () => { slug.textContent = slugify(name.value); });
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("pre[data-live]").forEach(follow);
});

// The project page's label editor: add a row without a round trip, show the scale's fields only
// for Likert labels, and grey out a row marked for removal. Without JavaScript the editor still
// works: "Add a label" posts the form back with one more blank row.
(() => {
  "use strict";

  function setKind(row) {
    const kind = row.querySelector("select[name$='-kind']");
    if (kind) row.dataset.kind = kind.value;
  }

  function init(editor) {
    if (editor.dataset.ready) return;
    editor.dataset.ready = "1";
    editor.classList.add("enhanced");
    const rows = editor.querySelector("[data-label-rows]");
    const total = editor.querySelector("input[name='labels-TOTAL_FORMS']");
    const template = editor.querySelector("#label-row-template");
    rows.querySelectorAll("[data-label-row]").forEach(setKind);

    editor.querySelector("[data-add-label]").addEventListener("click", (e) => {
      e.preventDefault();
      const index = Number(total.value);
      const html = template.innerHTML.replaceAll("__prefix__", String(index));
      rows.insertAdjacentHTML("beforeend", html);
      total.value = String(index + 1);
      const row = rows.lastElementChild;
      setKind(row);
      row.querySelector("input[name$='-name']").focus();
    });
    editor.addEventListener("change", (e) => {
      const row = e.target.closest("[data-label-row]");
      if (!row) return;
      if (e.target.matches("select[name$='-kind']")) setKind(row);
      if (e.target.matches("input[name$='-DELETE']")) row.classList.toggle("removed", e.target.checked);
    });
  }

  const start = () => document.querySelectorAll("[data-label-editor]").forEach(init);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

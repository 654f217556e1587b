// Veredicto task screens: keyboard shortcuts, a per-task timer, ranking by drag or keys, and
// visible errors for htmx requests. Everything here is an enhancement: the forms post without it.
(() => {
  "use strict";

  const workspace = () => document.getElementById("workspace");

  const isTyping = (el) =>
    !!el &&
    (el.tagName === "TEXTAREA" ||
      el.tagName === "SELECT" ||
      el.isContentEditable ||
      (el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(el.type)));

  function toast(message) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
    clearTimeout(box._timer);
    box._timer = setTimeout(() => (box.hidden = true), 6000);
  }

  // --- ranking ------------------------------------------------------------------------------
  const rankOf = (card) => Number(card.querySelector("[data-rank-select]").value);

  function renumber(list) {
    // Competition ranking (1, 1, 3): tied cards share the rank of the first card of their group.
    let rank = 0;
    [...list.children].forEach((card, index) => {
      if (index === 0) card.dataset.tied = "false";
      if (card.dataset.tied !== "true") rank = index + 1;
      card.querySelector("[data-rank-select]").value = String(rank);
      card.classList.toggle("tied", card.dataset.tied === "true");
    });
  }

  function sortBySelects(list) {
    const cards = [...list.children];
    cards.sort((a, b) => rankOf(a) - rankOf(b));
    cards.forEach((card, index) => {
      card.dataset.tied = String(index > 0 && rankOf(card) === rankOf(cards[index - 1]));
      list.appendChild(card);
    });
    renumber(list);
  }

  function initRanking(root) {
    const list = root.querySelector("[data-ranking]");
    if (!list || list.dataset.ready) return;
    list.dataset.ready = "1";
    sortBySelects(list);
    let dragged = null;
    list.addEventListener("dragstart", (e) => {
      dragged = e.target.closest(".rank-card");
      dragged?.classList.add("dragging");
    });
    list.addEventListener("dragover", (e) => {
      e.preventDefault();
      const over = e.target.closest(".rank-card");
      if (!dragged || !over || over === dragged) return;
      const box = over.getBoundingClientRect();
      list.insertBefore(dragged, e.clientY < box.top + box.height / 2 ? over : over.nextSibling);
    });
    list.addEventListener("dragend", () => {
      dragged?.classList.remove("dragging");
      dragged = null;
      renumber(list);
    });
    list.addEventListener("change", (e) => {
      if (e.target.matches("[data-rank-select]")) sortBySelects(list);
    });
  }

  function rankingKeys(e, root) {
    const list = root.querySelector("[data-ranking]");
    if (!list) return false;
    const cards = [...list.children];
    const digit = e.code.startsWith("Digit") ? Number(e.code.slice(5)) : 0;
    if (digit && !e.shiftKey && digit <= cards.length) {
      cards[digit - 1].focus();
      return true;
    }
    const card = document.activeElement?.closest?.(".rank-card");
    if (!card) return false;
    const key = e.key.toLowerCase();
    if ((key === "arrowup" || key === "k") && card.previousElementSibling) {
      list.insertBefore(card, card.previousElementSibling);
    } else if ((key === "arrowdown" || key === "j") && card.nextElementSibling) {
      list.insertBefore(card.nextElementSibling, card);
    } else if (key === "t") {
      card.dataset.tied = card.dataset.tied === "true" ? "false" : "true";
    } else {
      return false;
    }
    renumber(list);
    card.focus();
    return true;
  }

  // --- timer and focus ------------------------------------------------------------------------
  function initTask(root) {
    const ws = root.id === "workspace" ? root : root.querySelector?.("#workspace");
    if (!ws) return;
    ws.dataset.startedAt = String(performance.now());
    initRanking(ws);
    const editor = ws.querySelector("textarea[name=text]");
    if (editor) editor.focus();
    // Keys are live from here on (browser tests wait for this before typing).
    ws.dataset.ready = "1";
  }

  document.addEventListener(
    "submit",
    (e) => {
      const ws = workspace();
      const input = e.target.querySelector?.("input[name=seconds_spent]");
      if (ws && input && ws.dataset.startedAt) {
        input.value = ((performance.now() - Number(ws.dataset.startedAt)) / 1000).toFixed(1);
      }
    },
    true,
  );

  // --- keyboard -------------------------------------------------------------------------------
  function check(selector) {
    const input = workspace()?.querySelector(selector);
    if (input) input.checked = true;
    return !!input;
  }

  document.addEventListener("keydown", (e) => {
    const ws = workspace();
    if (!ws || !ws.dataset.taskKind) return;
    const form = ws.querySelector("#task-form");
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      form?.requestSubmit();
      return;
    }
    if (isTyping(document.activeElement)) {
      if (e.key === "Escape") document.activeElement.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    let handled = false;
    const key = e.key.toLowerCase();
    const digit = e.code.startsWith("Digit") ? Number(e.code.slice(5)) : 0;
    if (e.key === "?") {
      const help = ws.querySelector("#keys-help");
      if (help) help.open ? help.close() : help.showModal();
      handled = true;
    } else if (key === "s" && !e.shiftKey) {
      ws.querySelector("form.skip")?.requestSubmit();
      handled = true;
    } else if (key === "g") {
      const details = ws.querySelector("details.guidelines");
      if (details && !details.hidden) details.open = !details.open;
      handled = true;
    } else if (ws.dataset.taskKind === "pairwise" && digit) {
      handled = e.shiftKey
        ? check(`input[name=strength][data-shift-key="${digit}"]`)
        : check(`input[name=side][data-key="${digit}"]`);
    } else if (ws.dataset.taskKind === "ranking") {
      handled = rankingKeys(e, ws);
    }
    if (handled) e.preventDefault();
  });

  document.addEventListener("click", (e) => {
    if (e.target.closest("[data-action=help]")) workspace()?.querySelector("#keys-help")?.showModal();
  });

  // --- htmx wiring ----------------------------------------------------------------------------
  document.addEventListener("htmx:responseError", (e) => {
    const status = e.detail.xhr.status;
    const reasons = {
      403: "You are not allowed to do that.",
      404: "That task is not yours or no longer exists.",
      409: "This task can no longer be changed.",
    };
    toast(`${reasons[status] || "The server could not save this."} (HTTP ${status}) Nothing you typed was lost.`);
  });
  document.addEventListener("htmx:sendError", () =>
    toast("Network error: your answer was not sent. It is still here; try again."),
  );

  if (window.htmx) {
    htmx.onLoad(initTask);
  } else {
    document.addEventListener("DOMContentLoaded", () => initTask(document.body));
  }
})();

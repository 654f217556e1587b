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
  function check(selector, root = workspace()) {
    const input = root?.querySelector(selector);
    if (input) {
      input.checked = true;
      // As a click would: whatever listens for a change (the error clean-up below) hears it.
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
    return !!input;
  }

  // An answer given since the form came back with errors makes their messages stale: "Pick the
  // better reply" must go once a reply is picked (and a strength is moot after tie / both bad).
  document.addEventListener("change", (e) => {
    const form = e.target.closest?.("#task-form");
    if (!form || e.target.type !== "radio") return;
    e.target.closest("fieldset")?.querySelectorAll(".errorlist").forEach((list) => list.remove());
    if (e.target.name === "side" && ["tie", "both_bad"].includes(e.target.value)) {
      form.querySelectorAll("fieldset.strength .errorlist").forEach((list) => list.remove());
    }
  });

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
      // A project whose votes need no strength: the pick is the vote (Shift+1–3 goes first).
      if (handled && !e.shiftKey && form?.hasAttribute("data-submit-on-pick")) form.requestSubmit();
    } else if (ws.dataset.taskKind === "ranking") {
      handled = rankingKeys(e, ws);
    }
    if (handled) e.preventDefault();
  });

  document.addEventListener("click", (e) => {
    if (e.target.closest("[data-action=help]")) workspace()?.querySelector("#keys-help")?.showModal();
  });

  // --- live battles ---------------------------------------------------------------------------
  // 1 / 2 / 3 / 4 vote A / B / tie / both bad; Shift+1–3 first says by how much. The vote form
  // arrives by htmx once both replies are written, so it is looked up at each key.
  document.addEventListener("keydown", (e) => {
    const form = document.querySelector("#vote-form");
    if (!form || isTyping(document.activeElement) || e.ctrlKey || e.metaKey || e.altKey) return;
    const digit = e.code.startsWith("Digit") ? Number(e.code.slice(5)) : 0;
    const target = e.shiftKey
      ? form.querySelector(`input[name=strength][data-shift-key="${digit}"]`)
      : form.querySelector(`button[name=choice][data-key="${digit}"]`);
    if (!digit || !target) return;
    e.preventDefault();
    if (e.shiftKey) target.checked = true;
    else target.click();
  });

  // --- review ---------------------------------------------------------------------------------
  // The queue: j / k move between rows, x ticks one, Enter opens it, Shift+A accepts the ticked.
  // A judgement's page: a accepts at once, r rejects (say why, then Ctrl+Enter), e edits the
  // reply, j / k open the next / previous judgement. No key acts while typing in a text box.
  function queueKeys(e, queue) {
    const rows = [...queue.querySelectorAll("[data-review-row]")];
    const current = queue.querySelector("[data-review-row].current");
    const at = rows.indexOf(current);
    const key = e.key;
    let next = null;
    if (key === "j") next = rows[Math.min(at + 1, rows.length - 1)];
    else if (key === "k") next = rows[Math.max(at - 1, 0)];
    else if (key === "x" && current) {
      const box = current.querySelector("input[name=selected]:not(:disabled)");
      if (box) box.checked = !box.checked;
      countTicked(queue);
      return true;
    } else if (key === "A") {
      queue.querySelector("[data-bulk-accept]")?.click();
      return true;
    } else return false;
    if (!next) return true;
    current?.classList.remove("current");
    next.classList.add("current");
    next.querySelector("a")?.focus(); // Enter opens it
    return true;
  }

  function decisionKeys(e, page) {
    const form = page.querySelector("form[data-decision]");
    const key = e.key;
    if (key === "j" || key === "k") {
      page.querySelector(key === "j" ? "a[rel=next]" : "a[rel=prev]")?.click();
      return true;
    }
    if (!form || !["a", "r", "e"].includes(key)) return false;
    if (!check(`input[name=decision][data-key="${key}"]`, form)) return false;
    if (key === "a") form.requestSubmit();
    else form.querySelector(key === "r" ? "textarea[name=comment]" : "textarea[name=text]")?.focus();
    return true;
  }

  document.addEventListener("keydown", (e) => {
    const page = document.querySelector("[data-review]");
    const queue = document.querySelector("[data-review-queue]");
    if (!page && !queue) return;
    if (page && (e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      page.querySelector("form[data-decision]")?.requestSubmit();
      return;
    }
    if (isTyping(document.activeElement)) {
      if (e.key === "Escape") document.activeElement.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (page ? decisionKeys(e, page) : queueKeys(e, queue)) e.preventDefault();
  });

  // Bulk accept says how many it would take before its confirmation page says which.
  function countTicked(root) {
    const ticked = root.querySelectorAll("input[name=selected]:checked").length;
    const label = root.querySelector("[data-selected-count]");
    if (label) label.textContent = ticked ? `${ticked} ticked.` : "None ticked.";
    const button = root.querySelector("[data-bulk-accept]");
    if (button) button.textContent = ticked ? `Accept ${ticked} ticked…` : "Accept ticked…";
  }

  document.addEventListener("change", (e) => {
    const queue = e.target.closest?.("[data-review-queue]");
    if (!queue) return;
    if (e.target.matches("[data-select-all]")) {
      queue.querySelectorAll("input[name=selected]:not(:disabled)").forEach((box) => {
        box.checked = e.target.checked;
      });
    }
    countTicked(queue);
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

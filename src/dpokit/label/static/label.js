// dpokit label: the keyboard. Everything here also works with the mouse; nothing here is needed to submit a form.
"use strict";

(function () {
  const form = document.getElementById("judge");
  const undoForm = document.getElementById("undo-form");
  const started = performance.now();  // time taken counts from page load
  let submitting = false;

  function isTyping(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(target.type)));
  }

  function hint(text) {
    const box = document.getElementById("hint");
    if (box) box.textContent = text;
  }

  function choice() {
    const checked = form && form.querySelector('input[name="choice"]:checked');
    return checked ? checked.value : "";
  }

  function pick(value) {
    const radio = form.querySelector('input[name="choice"][value="' + value + '"]');
    if (!radio) return;
    radio.checked = true;
    radio.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function submit() {
    if (!form || submitting) return;
    if (!choice()) { hint("Pick an answer first (1, 2, T, B or S)."); return; }
    form.requestSubmit();
  }

  // --- the pair view -----------------------------------------------------------------------------------------------
  function pickedText() {
    const side = choice();
    const box = document.querySelector("#response-" + side + " .text");
    return box ? box.textContent : null;
  }

  function closeEdit() {
    const area = document.getElementById("edited_text");
    if (!area) return;
    area.value = "";
    area.disabled = true;  // a disabled field is not sent
    document.getElementById("edit").hidden = true;
  }

  function openEdit() {
    const original = pickedText();
    if (original === null) { hint("Pick A or B first: the edit corrects the better answer."); return; }
    const area = document.getElementById("edited_text");
    const box = document.getElementById("edit");
    if (box.hidden) {
      area.disabled = false;
      area.value = original;  // .value, never innerHTML: the answer stays text
      area.dataset.original = original;
      area.dataset.side = choice();
      document.getElementById("edit-side").textContent = choice() === "left" ? "answer A" : "answer B";
      box.hidden = false;
    }
    area.focus();
  }

  function syncPair() {
    const value = choice();
    for (const side of ["left", "right"]) {
      const card = document.getElementById("response-" + side);
      if (card) card.classList.toggle("chosen", value === side);
    }
    const picksOne = value === "left" || value === "right";
    for (const radio of form.querySelectorAll('input[name="strength"]')) radio.disabled = !picksOne;
    const area = document.getElementById("edited_text");
    if (area && !area.disabled && area.dataset.side !== value) closeEdit();  // an edit belongs to the answer it corrects
    hint("");
  }

  function cycleStrength() {
    const radios = Array.from(form.querySelectorAll('input[name="strength"]'));
    if (!radios.length || radios[0].disabled) { hint("Strength goes with A or B."); return; }
    const at = radios.findIndex((r) => r.checked);
    radios[(at + 1) % radios.length].checked = true;
  }

  // --- the ranking view --------------------------------------------------------------------------------------------
  function rankInputs() {
    return Array.from(form.querySelectorAll('input[name^="rank_"]'));
  }

  function rankNext(position) {
    const inputs = rankInputs();
    const input = inputs[position - 1];
    if (!input || input.value) return;
    const used = inputs.filter((i) => i.value).length;
    input.value = String(used + 1);
  }

  function rankBack() {
    const inputs = rankInputs();
    const last = inputs.filter((i) => i.value).sort((a, b) => Number(b.value) - Number(a.value))[0];
    if (last) last.value = "";
  }

  function syncRank() {
    const skipping = choice() !== "rank";
    for (const input of rankInputs()) input.disabled = skipping;
  }

  // --- wiring ------------------------------------------------------------------------------------------------------
  if (form) {
    const kind = form.dataset.kind;
    form.addEventListener("change", kind === "pair" ? syncPair : syncRank);
    form.addEventListener("submit", function (event) {
      if (submitting) { event.preventDefault(); return; }
      if (!choice()) { event.preventDefault(); hint("Pick an answer first (1, 2, T, B or S)."); return; }
      const area = document.getElementById("edited_text");
      if (area && !area.disabled && area.value === area.dataset.original) area.disabled = true;  // unchanged: no edit
      form.elements.seconds.value = ((performance.now() - started) / 1000).toFixed(2);
      submitting = true;
    });
    const editButton = document.getElementById("edit-button");
    if (editButton) editButton.addEventListener("click", openEdit);
    if (kind === "pair") syncPair(); else syncRank();
  }

  const PAIR_KEYS = { "1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
                      "t": "tie", "b": "both_bad", "s": "skip" };

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && form) {  // submits even from the edit box
      event.preventDefault();
      submit();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (isTyping(event.target)) {  // typing is typing; Escape leaves the box, Enter in a one-line field submits
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "u" && undoForm) { event.preventDefault(); undoForm.requestSubmit(); return; }
    if (!form) return;
    if (key === "Enter") { event.preventDefault(); submit(); return; }
    if (key === "r") { event.preventDefault(); document.getElementById("reason").focus(); return; }
    if (form.dataset.kind === "pair") {
      if (PAIR_KEYS[key]) { event.preventDefault(); pick(PAIR_KEYS[key]); }
      else if (key === "e") { event.preventDefault(); openEdit(); }
      else if (key === "m") { event.preventDefault(); cycleStrength(); }
    } else {
      if (key === "s" || key === "b") {  // pressed again: back to ranking
        const value = key === "s" ? "skip" : "both_bad";
        event.preventDefault();
        pick(choice() === value ? "rank" : value);
      }
      else if (/^[1-9]$/.test(key)) { event.preventDefault(); pick("rank"); rankNext(Number(key)); }
      else if (key === "Backspace") { event.preventDefault(); rankBack(); }
    }
  });
})();

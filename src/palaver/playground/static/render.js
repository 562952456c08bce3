// Model text as markdown, safely: HTML a model writes is shown as text (never parsed), and
// what marked builds passes DOMPurify before it reaches the page. The page's CSP allows no
// inline script either way, and images only from palaver itself (no tracking pixels).
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const escapes = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => text.replace(/[&<>"']/g, (c) => escapes[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escape(text); // raw HTML in a reply is words, not markup
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
};

// Renders `text` (markdown) into `element`, replacing what it held.
export function renderMarkdown(element, text) {
  const html = marked.parse(text, { async: false });
  element.replaceChildren(DOMPurify.sanitize(html, PURIFY));
  for (const block of element.querySelectorAll("pre")) addCopy(block);
}

// Plain text, as typed.
export function renderText(element, text) {
  element.textContent = text;
}

function addCopy(block) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(block.querySelector("code")?.textContent ?? "");
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  block.append(button);
}

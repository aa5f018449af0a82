// Markdown to DOM for the chat page: parsed by marked, sanitized by DOMPurify (both vendored, see vendor/VENDORED.md).
// An answer is model output, so it is untrusted: nothing it holds may run script, restyle the page or load anything.
// Two layers: marked renders no raw HTML (it is escaped to text), and DOMPurify cleans what marked does render
// (a `javascript:` link, say) before it reaches the page.
"use strict";

(() => {
  // Tags an answer may not produce even though DOMPurify's HTML profile allows them: <style> would restyle the page,
  // forms and controls could imitate the page's own, and media would load URLs the model chose (an exfiltration
  // channel: the URL can carry the conversation). Markdown images become links instead (see `image` below).
  const FORBIDDEN_TAGS = [
    "style", "img", "picture", "source", "video", "audio", "track", "iframe", "object", "embed",
    "form", "input", "button", "textarea", "select", "option", "link", "meta", "base",
  ];
  const PURIFY_OPTIONS = Object.freeze({
    USE_PROFILES: { html: true }, // no SVG or MathML
    FORBID_TAGS: FORBIDDEN_TAGS,
    FORBID_ATTR: ["style", "id", "name"], // ids and names could shadow the page's own elements
    RETURN_DOM_FRAGMENT: true,
  });

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  const parser = new marked.Marked({
    gfm: true,
    breaks: false,
    async: false,
    renderer: {
      // Raw HTML in an answer is shown as the text it is, as a chat shows code a model writes: none of it becomes
      // markup (and none of it is parsed, so not even a blocked inline handler is ever seen by the browser).
      html({ text }) {
        return escapeHtml(text);
      },
      // A link to the image, never the image: the page loads no URL an answer names.
      image({ href, text }) {
        const label = text || href;
        return `<a href="${escapeHtml(href)}">${escapeHtml(label)}</a>`;
      },
    },
  });

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    // Links in an answer open apart from the chat, and the page they open cannot reach back into it.
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  /** A code block as shown: the block, and a button that copies its text. */
  function withCopyButton(pre) {
    const block = document.createElement("div");
    block.className = "code-block";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    pre.replaceWith(block);
    block.append(button, pre);
  }

  /** `text` (markdown, possibly cut mid-way while it streams) as a sanitized fragment ready to insert. */
  function render(text) {
    const fragment = DOMPurify.sanitize(parser.parse(text), PURIFY_OPTIONS);
    for (const pre of fragment.querySelectorAll("pre")) withCopyButton(pre);
    return fragment;
  }

  /** Copy a code block's text when its button is clicked (one listener for a whole container, by delegation). */
  function handleCopyClicks(container) {
    container.addEventListener("click", async (event) => {
      const button = event.target instanceof Element ? event.target.closest("button.copy") : null;
      if (!button) return;
      const code = button.parentElement.querySelector("pre");
      try {
        await navigator.clipboard.writeText(code ? code.textContent : "");
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed"; // no clipboard access (an insecure origin, or permission denied)
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }

  window.tokenrelayMarkdown = Object.freeze({ render, handleCopyClicks });
})();

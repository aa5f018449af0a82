// What the chat page keeps across a reload: the conversation on screen and the answer still in flight (its stream
// id, events and stop URLs with their tokens, the last SSE cursor seen and the text up to that cursor). Never the API
// key: the stream's URLs carry tokens for the one stream they name, so a resumed answer needs no key to read or stop.
"use strict";

(() => {
  // sessionStorage, not localStorage: a reload of the tab keeps its conversation, but closing the tab forgets it, so
  // the stream tokens in it (capabilities to read and stop an answer) do not outlive the tab on disk, and two tabs
  // never write over each other's conversation.
  const STORAGE = window.sessionStorage;
  const STORAGE_KEY = "tokenrelay.chat";
  // Bumped whenever the saved shape changes: a page never restores a shape it does not know.
  const VERSION = 1;

  /** A stream's part that is saved: what it showed and where to resume it (`toolCalls` as `[call, fragment]` pairs). */
  function streamRecord(stream) {
    return {
      id: stream.id, eventsUrl: stream.eventsUrl, stopUrl: stream.stopUrl, cursor: stream.cursor,
      tokens: stream.tokens, prompt: stream.prompt, model: stream.model, answer: stream.answer,
      reasoning: stream.reasoning, toolCalls: [...stream.toolCalls.entries()],
    };
  }

  /** The saved conversation, or null when there is none (or it is of another shape: it is then forgotten). */
  function load() {
    let saved;
    try {
      saved = JSON.parse(STORAGE.getItem(STORAGE_KEY) || "null");
    } catch {
      saved = null;
    }
    if (saved && saved.version === VERSION && Array.isArray(saved.turns) && Array.isArray(saved.conversation)) {
      return saved;
    }
    if (saved) clear();
    return null;
  }

  /**
   * Save the page's state: `conversation` (the messages of the next request), `turns` (ended turns as shown),
   * `inflight` (the stream record of the answer still arriving, or null) and `status` (the last state line).
   */
  function save(state) {
    try {
      STORAGE.setItem(STORAGE_KEY, JSON.stringify({ version: VERSION, ...state }));
    } catch (error) {
      // Over the storage quota: an older copy would restore a conversation without its latest turns, so none is kept.
      clear();
      console.warn(`the conversation is too large to keep across a reload: ${error}`);
    }
  }

  function clear() {
    STORAGE.removeItem(STORAGE_KEY);
  }

  window.tokenrelayMemory = Object.freeze({ streamRecord, load, save, clear });
})();

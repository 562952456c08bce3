// The playground: a model picker, a system prompt, a streamed chat kept by palaver, each
// reply's numbers (cache, time to first token, total, palaver's share, tokens, trimmed), and
// a sidebar of the caller's conversations. Talks to palaver's own API on the page's origin.
import { Api, ApiError, newConversationId, serverTiming } from "./api.js";
import { Sidebar, titleOf } from "./sidebar.js";
import { renderMarkdown, renderText } from "./render.js";

const $ = (selector) => document.querySelector(selector);
const MODEL_STORAGE = "palaver.model";

class Chat {
  constructor(api) {
    this.api = api;
    this.conversation = null; // its id, once a turn named it or it was opened
    this.stored = false; // palaver holds it (a turn was kept, or it was opened)
    this.controller = null; // the turn in flight
    this.messages = $("#messages");
    this.empty = $("#empty");
    this.input = $("#input");
    this.system = $("#system");
    this.model = $("#model");
    this.sidebar = new Sidebar(api, {
      open: (info) => this.open(info),
      removed: (id) => id === this.conversation && this.reset(),
      renamed: (info) => info.id === this.conversation && this.setTitle(info),
      failed: (error) => this.notice(error),
    });
    $("#composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    $("#stop").addEventListener("click", () => this.controller?.abort());
    $("#new-chat").addEventListener("click", () => {
      this.reset();
      this.sidebar.close();
    });
    this.model.addEventListener("change", () =>
      localStorage.setItem(MODEL_STORAGE, this.model.value),
    );
  }

  async start() {
    await Promise.all([this.loadModels(), this.sidebar.load()]);
  }

  async loadModels() {
    let list;
    try {
      list = await this.api.models();
    } catch (error) {
      if (error.status !== 401) this.notice(error); // a 401 asks for the key
      return;
    }
    const remembered = localStorage.getItem(MODEL_STORAGE);
    const ids = list.data.map((model) => model.id);
    this.model.replaceChildren(
      ...ids.map((id) => {
        const option = document.createElement("option");
        option.value = option.textContent = id;
        return option;
      }),
    );
    if (ids.includes(remembered)) this.model.value = remembered;
  }

  reset() {
    this.controller?.abort();
    this.conversation = null;
    this.stored = false; // the system prompt stays: a setting for the next conversation too
    this.messages.replaceChildren(this.empty);
    this.setTitle(null);
    this.sidebar.highlight(null);
    this.input.focus();
  }

  setTitle(info) {
    $("#title").textContent = info ? titleOf(info) : "";
  }

  async open(info) {
    this.controller?.abort();
    let items;
    try {
      items = await this.api.items(info.id);
    } catch (error) {
      this.notice(error);
      return;
    }
    this.conversation = info.id;
    this.stored = true;
    this.setTitle(info);
    this.sidebar.highlight(info.id);
    this.messages.replaceChildren();
    const system = [];
    for (const item of items) {
      if (item.type === "message" && (item.role === "system" || item.role === "developer")) {
        system.push(textOf(item));
      } else if (item.type === "message") {
        this.bubble(item.role, textOf(item));
      } else if (item.type === "function_call") {
        this.bubble("tool", `${item.name}(${item.arguments})`);
      } else if (item.type === "function_call_output") {
        this.bubble("tool", String(item.output));
      }
    }
    this.system.value = system.join("\n\n");
    $("#system-box").open = system.length > 0;
    this.scroll();
  }

  bubble(role, text) {
    this.empty.remove();
    const article = document.createElement("article");
    article.className = `msg ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "assistant") renderMarkdown(body, text);
    else renderText(body, text);
    article.append(body);
    this.messages.append(article);
    return article;
  }

  notice(error, after) {
    const article = this.bubble("error", describe(error));
    if (after) after.after(article);
    this.scroll();
    return article;
  }

  scroll() {
    this.messages.scrollTop = this.messages.scrollHeight;
  }

  busy(on) {
    $("#send").hidden = on;
    $("#stop").hidden = !on;
  }

  async send() {
    const text = this.input.value.trim();
    if (!text || this.controller) return;
    if (!this.model.value) {
      this.notice(new ApiError(0, { message: "No model to send to: palaver lists none." }));
      return;
    }
    this.input.value = "";
    const firstTurn = !this.stored;
    this.conversation ??= newConversationId();
    const conversation = this.conversation;
    const question = this.bubble("user", text);
    const answer = this.bubble("assistant", "");
    answer.classList.add("streaming");
    const body = answer.querySelector(".body");
    const meta = new Meta(answer);
    const messages = [];
    const system = this.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: text });
    const controller = (this.controller = new AbortController());
    this.busy(true);
    this.scroll();
    const sent = performance.now();
    let reply = "";
    let pending = false;
    const paint = () => {
      pending = false;
      renderMarkdown(body, reply);
      this.scroll();
    };
    try {
      const { headers, events } = await this.api.chat(
        {
          model: this.model.value,
          messages,
          stream: true,
          stream_options: { include_usage: true },
        },
        conversation,
        controller.signal,
      );
      meta.headers(headers, performance.now() - sent);
      for await (const event of events) {
        if (event.error) throw new ApiError(500, event.error);
        for (const choice of event.choices ?? []) {
          const piece = choice.delta?.content;
          if (piece) {
            if (!reply) meta.firstToken(performance.now() - sent);
            reply += piece;
            if (!pending) {
              pending = true;
              requestAnimationFrame(paint);
            }
          }
          if (choice.finish_reason) meta.finish(choice.finish_reason);
        }
        if (event.usage) meta.usage(event.usage);
      }
      paint();
      meta.done(performance.now() - sent);
      this.stored = true;
      if (firstTurn) await this.titled(conversation, text);
    } catch (error) {
      paint();
      if (error.name === "AbortError") {
        meta.stopped(performance.now() - sent);
      } else {
        meta.failed();
        this.notice(error, answer);
      }
      question.classList.add("unsaved");
      question.title = "Not kept: the turn did not complete";
      if (!reply) answer.remove();
    } finally {
      answer.classList.remove("streaming");
      if (this.controller === controller) this.controller = null;
      this.busy(false);
    }
  }

  // The first kept turn of a new conversation names it after its first words.
  async titled(id, text) {
    const title = text.replace(/\s+/g, " ").slice(0, 60);
    try {
      const info = await this.api.rename(id, title);
      if (id === this.conversation) this.setTitle(info);
    } catch (error) {
      this.notice(error);
    }
    await this.sidebar.load();
    this.sidebar.highlight(id);
  }
}

// The numbers under a reply.
class Meta {
  constructor(article) {
    this.element = document.createElement("div");
    this.element.className = "meta";
    article.append(this.element);
  }

  chip(name, text, title) {
    let chip = this.element.querySelector(`[data-k="${name}"]`);
    if (!chip) {
      chip = document.createElement("span");
      chip.dataset.k = name;
      this.element.append(chip);
    }
    chip.textContent = text;
    if (title) chip.title = title;
    return chip;
  }

  headers(headers, elapsed) {
    const cache = headers.get("x-cache");
    if (cache) this.chip("cache", cache, "X-Cache: served from palaver's cache?").className =
      `cache ${cache.toLowerCase()}`;
    const timing = serverTiming(headers.get("server-timing"));
    if (timing.palaver !== undefined) {
      this.chip("palaver", `palaver ${ms(timing.palaver)}`, "Time palaver spent before answering (Server-Timing)");
    }
    const trimmed = headers.get("x-palaver-trimmed");
    if (trimmed) this.chip("trimmed", `trimmed ${trimmed}`, "X-Palaver-Trimmed: stored messages left out to fit");
    this.requestId = headers.get("x-request-id");
    this.headersAt = elapsed;
  }

  firstToken(elapsed) {
    this.chip("ttft", `first token ${ms(elapsed)}`, "Time to first token");
  }

  usage(usage) {
    this.chip(
      "tokens",
      `${usage.prompt_tokens} in · ${usage.completion_tokens} out`,
      `${usage.total_tokens} tokens`,
    );
  }

  finish(reason) {
    if (reason !== "stop") this.chip("finish", reason, "finish_reason");
  }

  done(elapsed) {
    this.chip("total", `total ${ms(elapsed)}`, this.requestId ? `request ${this.requestId}` : "");
  }

  stopped(elapsed) {
    this.chip("stopped", `stopped after ${ms(elapsed)} · not kept`, "palaver cancelled the model's answer and kept nothing of this turn");
  }

  failed() {
    this.chip("failed", "failed · not kept");
  }
}

function ms(value) {
  return value < 10 ? `${value.toFixed(1)} ms` : value < 10000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`;
}

function textOf(item) {
  return (item.content ?? [])
    .map((part) => part.text ?? part.refusal ?? (part.type ? `[${part.type}]` : ""))
    .join("");
}

function describe(error) {
  if (error instanceof ApiError) {
    const what = error.status ? `Error ${error.status}` : "Error";
    const code = error.code ? ` (${error.code})` : "";
    return `${what}${code}: ${error.message}`;
  }
  return `Error: ${error.message || error}`;
}

// The key: asked for when palaver answers 401, kept in localStorage.
function keyDialog(api, chat) {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  const state = () => ($("#key-state").textContent = api.key ? "key saved" : "");
  const ask = (reason) => {
    $("#key-reason").textContent = reason;
    input.value = api.key;
    if (!dialog.open) dialog.showModal();
    input.focus();
  };
  api.onUnauthorized = (error) => ask(error.message);
  $("#key-form").addEventListener("submit", () => {
    api.key = input.value.trim();
    state();
    chat.start();
  });
  $("#key-forget").addEventListener("click", () => {
    api.key = "";
    input.value = "";
    state();
    dialog.close();
  });
  $("#change-key").addEventListener("click", () => ask("The API key this page sends."));
  state();
}

function drawer() {
  const open = (on) => {
    document.body.classList.toggle("drawer", on);
    $("#backdrop").hidden = !on;
  };
  $("#menu").addEventListener("click", () => open(!document.body.classList.contains("drawer")));
  $("#backdrop").addEventListener("click", () => open(false));
  return () => open(false);
}

const api = new Api();
const chat = new Chat(api);
chat.sidebar.close = drawer();
keyDialog(api, chat);
chat.start();

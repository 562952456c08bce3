// palaver's HTTP API as the page uses it: the key, errors in words, the conversation routes,
// and a chat stream read event by event. Same origin as the page, so every header is readable.

const KEY_STORAGE = "palaver.apiKey";

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `palaver answered ${status}.`);
    this.name = "ApiError";
    this.status = status;
    this.code = error?.code ?? null;
    this.param = error?.param ?? null;
    this.type = error?.type ?? null;
  }
}

export class Api {
  constructor(base = "") {
    this.base = base;
    this.onUnauthorized = null; // called with the ApiError of a 401
  }

  get key() {
    return localStorage.getItem(KEY_STORAGE) || "";
  }

  set key(value) {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  }

  async request(method, path, body, { signal, headers } = {}) {
    const init = { method, headers: this.headers(headers), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(this.base + path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, { message: `Could not reach palaver (${error.message}).` });
    }
    if (!response.ok) throw await this.failure(response);
    return response;
  }

  async failure(response) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      // not JSON: a proxy in between, say; the status says enough
    }
    const failure = new ApiError(response.status, error);
    if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(failure);
    return failure;
  }

  async json(method, path, body) {
    return (await this.request(method, path, body)).json();
  }

  models() {
    return this.json("GET", "/v1/models");
  }

  conversations(after) {
    const query = new URLSearchParams({ limit: "20" });
    if (after) query.set("after", after);
    return this.json("GET", `/v1/conversations?${query}`);
  }

  rename(id, title) {
    return this.json("POST", `/v1/conversations/${encodeURIComponent(id)}`, {
      metadata: { title },
    });
  }

  remove(id) {
    return this.json("DELETE", `/v1/conversations/${encodeURIComponent(id)}`);
  }

  async items(id) {
    const items = [];
    let after = null;
    for (;;) {
      const query = new URLSearchParams({ limit: "100", order: "asc" });
      if (after) query.set("after", after);
      const page = await this.json(
        "GET",
        `/v1/conversations/${encodeURIComponent(id)}/items?${query}`,
      );
      items.push(...page.data);
      if (!page.has_more || page.data.length === 0) return items;
      after = page.data[page.data.length - 1].id;
    }
  }

  // POST /v1/chat/completions with stream: true. Resolves once the headers are in, with the
  // response's headers and an async iterator of its parsed events (chunks or errors).
  async chat(body, conversation, signal) {
    const headers = conversation ? { "X-Conversation-Id": conversation } : {};
    const response = await this.request("POST", "/v1/chat/completions", body, {
      signal,
      headers,
    });
    return { headers: response.headers, events: events(response.body) };
  }
}

// Server-sent events as JSON objects; ends at `data: [DONE]` or the end of the body.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// The durations of a Server-Timing header by name: {palaver: 2.5, provider: 0.1}.
export function serverTiming(value) {
  const timings = {};
  for (const part of (value || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    const duration = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && duration) timings[name] = Number(duration.slice(4));
  }
  return timings;
}

// A new conversation id: palaver creates a conversation the first time a turn names it.
export function newConversationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "conv_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

"""The openai Node SDK running in the browser (as a web app bundles it), on a page of another
origin than palaver's: allowed with ``server.cors_origins``, refused by the browser without.

The page is served by a small site of its own (another port: another origin) that serves the
SDK's ES modules straight from tests/clients/node/node_modules (installed by ``npm ci`` from
its lock) behind an import map, so the browser runs the very files a bundler would take.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import serve

SDK = Path(__file__).parents[1] / "clients" / "node" / "node_modules" / "openai"

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8">
<script type="importmap">{"imports": {"openai": "/openai/index.mjs"}}</script>
<script type="module">
import OpenAI from "openai";
window.ask = async (baseURL, how) => {
  const client = new OpenAI({
    baseURL, apiKey: "sk-browser", dangerouslyAllowBrowser: true, maxRetries: 0,
  });
  const messages = [{ role: "user", content: "hello from another origin" }];
  try {
    if (how === "stream") {
      const stream = await client.chat.completions.create(
        { model: "up-model", messages, stream: true },
        { headers: { "X-Conversation-Id": "browser-stream" } },
      );
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      return { ok: true, text };
    }
    if (how === "responses") {
      const response = await client.responses.create({ model: "up-model", input: "hi there" });
      return { ok: true, text: response.output_text, id: response.id };
    }
    const { data, response } = await client.chat.completions
      .create({ model: "up-model", messages }, { headers: { "X-Conversation-Id": "browser" } })
      .withResponse();
    const header = (name) => response.headers.get(name);
    return {
      ok: true,
      text: data.choices[0].message.content,
      cache: header("x-cache"),
      conversation: header("x-conversation-id"),
      requestId: header("x-request-id"),
    };
  } catch (error) {
    return { ok: false, error: `${error.constructor.name}: ${error.message}` };
  }
};
document.title = "ready";
</script></head><body>another origin</body></html>"""


async def site(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The other origin: the page, and the SDK's files under /openai/."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    status, body = 404, b"not found"
    kind: str | None = "text/plain"
    if path == "/":
        status, body, kind = 200, PAGE, "text/html"
    elif path.startswith("/openai/"):
        file = (SDK / path.removeprefix("/openai/")).resolve()
        if file.is_relative_to(SDK.resolve()) and file.is_file():
            status, body = 200, file.read_bytes()
            kind = "text/javascript" if file.suffix == ".mjs" else mimetypes.guess_type(file)[0]
    headers = [(b"content-type", (kind or "application/octet-stream").encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def other_origin() -> Iterator[str]:
    if not (SDK / "index.mjs").is_file():
        pytest.fail("the openai Node SDK is missing: make test runs npm ci in tests/clients/node")
    with serve(site) as url:
        yield url


def ask(page: Page, origin: str, palaver: str, how: str = "plain") -> dict[str, Any]:
    page.goto(origin + "/")
    page.wait_for_function("document.title === 'ready'")
    result: dict[str, Any] = page.evaluate("([url, how]) => window.ask(url, how)", [palaver, how])
    return result


def test_the_sdk_in_a_page_of_an_allowed_origin_reaches_palaver(
    page: Page, other_origin: str
) -> None:
    with (
        run_upstream("up1") as upstream,
        run_palaver(
            [provider_entry(upstream)],
            server={"cors_origins": [other_origin]},
            cache={"enabled": True},
        ) as url,
    ):
        first = ask(page, other_origin, url + "/v1")
        assert first == {
            "ok": True,
            "text": "[up1] hello from another origin",
            "cache": "MISS",
            "conversation": "browser",
            "requestId": first["requestId"],
        }
        assert first["requestId"].startswith("req_")
        streamed = ask(page, other_origin, url + "/v1", "stream")
        assert streamed == {"ok": True, "text": "[up1] hello from another origin"}
        responses = ask(page, other_origin, url + "/v1", "responses")
        assert responses["ok"]
        assert responses["text"] == "[up1] hi there"
        assert responses["id"].startswith("resp_")
        # the SDK sends X-Stainless-* headers: the preflight allowed them, the requests arrived
        sent = upstream.chat_requests[0]
        assert sent.body["messages"] == [{"role": "user", "content": "hello from another origin"}]
        assert len(upstream.chat_requests) == 2  # the stream asked the same: a cache hit


def test_the_sdk_in_a_page_of_another_origin_is_refused_without_cors_origins(
    page: Page, other_origin: str
) -> None:
    with (
        run_upstream("up1") as upstream,
        run_palaver([provider_entry(upstream)]) as url,
    ):
        refused = ask(page, other_origin, url + "/v1")
        assert refused["ok"] is False
        assert refused["error"].startswith("APIConnectionError")
        assert upstream.chat_requests == []  # the preflight failed: the request never left

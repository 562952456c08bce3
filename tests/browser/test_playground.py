"""The playground page (CONTRACT §12) in Debian's chromium, against palaver and the test
upstream: streaming, stop, the numbers under each reply, the sidebar, the key prompt, safe
rendering and the phone-sized layout."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import PHONE
from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.upstream import Upstream

Shot = Callable[[Page, str], Path]
MODEL = "up-model"
KEY = "sk-playground-test"


@dataclass
class Gateway:
    upstream: Upstream
    url: str
    key: str | None = None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def conversations(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.api("GET", "/v1/conversations?limit=100").json()["data"]
        return data


@contextmanager
def gateway(**server: Any) -> Iterator[Gateway]:
    with (
        run_upstream("up1", models=[MODEL, "other-model"]) as upstream,
        run_palaver(
            [provider_entry(upstream)], cache={"enabled": True}, server=server or {}
        ) as url,
    ):
        yield Gateway(upstream, url, (server.get("api_keys") or [None])[0])


@pytest.fixture
def gw() -> Iterator[Gateway]:
    with gateway() as running:
        yield running


def open_page(page: Page, gw: Gateway) -> None:
    page.goto(gw.url + "/")
    expect(page.locator("#model option")).to_have_count(2)


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def replies(page: Page) -> Any:
    return page.locator(".msg.assistant")


def wait_answered(page: Page, count: int) -> None:
    expect(page.locator(".msg.assistant .meta [data-k=total]")).to_have_count(count)


def test_a_reply_streams_in_with_its_numbers_and_a_repeat_is_a_cache_hit(
    page: Page, gw: Gateway, shot: Shot
) -> None:
    open_page(page, gw)
    page.select_option("#model", MODEL)
    page.click("#system-box summary")
    page.fill("#system", "Answer in one line.")
    shot(page, "ready")
    gw.upstream.behave(chunk_delay=0.25)
    send(page, "tell me about streams one word at a time")
    reply = replies(page).last.locator(".body")
    expect(page.locator("#stop")).to_be_visible()
    expect(reply).to_contain_text("[up1]")  # the first words, while the rest is on its way
    partial = reply.inner_text()
    shot(page, "streaming")
    assert "time" not in partial, "the whole reply arrived at once: not streamed"
    wait_answered(page, 1)
    expect(reply).to_have_text("[up1] tell me about streams one word at a time")
    expect(page.locator("#send")).to_be_visible()
    meta = replies(page).last.locator(".meta")
    expect(meta.locator("[data-k=cache]")).to_have_text("MISS")
    expect(meta.locator("[data-k=ttft]")).to_contain_text("first token")
    expect(meta.locator("[data-k=tokens]")).to_have_text("5 in · 7 out")
    expect(meta.locator("[data-k=palaver]")).to_contain_text("palaver")
    shot(page, "answered")
    sent = gw.upstream.chat_requests[-1].body
    assert sent["model"] == MODEL
    assert sent["messages"][0] == {"role": "system", "content": "Answer in one line."}
    assert sent["stream"] is True

    # the same first message in a new conversation: the same request upstream, a cache hit
    gw.upstream.behave()
    calls = len(gw.upstream.chat_requests)
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#system")).to_have_value("Answer in one line.")  # kept for new chats
    send(page, "tell me about streams one word at a time")
    wait_answered(page, 1)
    expect(replies(page).last.locator("[data-k=cache]")).to_have_text("HIT")
    expect(replies(page).last.locator(".body")).to_have_text(
        "[up1] tell me about streams one word at a time"
    )
    assert len(gw.upstream.chat_requests) == calls
    shot(page, "cache-hit")


def test_stop_aborts_the_stream_and_palaver_cancels_the_provider_call(
    page: Page, gw: Gateway, shot: Shot
) -> None:
    open_page(page, gw)
    gw.upstream.behave(chunk_delay=0.5)
    send(page, "a long answer " + "word " * 40)
    expect(replies(page).last.locator(".body")).to_contain_text("[up1]")
    shot(page, "streaming")
    page.click("#stop")
    expect(replies(page).last.locator("[data-k=stopped]")).to_contain_text("stopped")
    deadline = time.monotonic() + 5
    while not gw.upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.upstream.disconnects, "the upstream never saw the request go"
    expect(page.locator(".msg.user.unsaved")).to_have_count(1)
    expect(page.locator("#send")).to_be_visible()
    shot(page, "stopped")
    assert gw.conversations() == []  # an aborted turn is not kept (nor its conversation)

    gw.upstream.behave()
    send(page, "and now a short one")
    wait_answered(page, 1)
    assert len(gw.conversations()) == 1


def test_conversations_reopen_after_a_reload_rename_and_delete(
    page: Page, gw: Gateway, shot: Shot
) -> None:
    open_page(page, gw)
    page.click("#system-box summary")
    page.fill("#system", "You are a pirate.")
    send(page, "first question")
    wait_answered(page, 1)
    send(page, "second question")
    wait_answered(page, 2)
    # palaver kept the history: the second turn sent only the new message, the model saw all
    second = gw.upstream.chat_requests[-1].body["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations .name")).to_have_text("first question")

    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator(".msg")).to_have_count(0)
    shot(page, "reloaded")
    page.click("#conversations .open")
    expect(page.locator(".msg.user")).to_have_text(["first question", "second question"])
    expect(replies(page).locator(".body")).to_have_text(
        ["[up1] first question", "[up1] second question"]
    )
    expect(page.locator("#system")).to_have_value("You are a pirate.")
    expect(page.locator("#title")).to_have_text("first question")
    shot(page, "reopened")

    send(page, "third question")  # the reopened conversation goes on
    wait_answered(page, 1)
    assert [m["role"] for m in gw.upstream.chat_requests[-1].body["messages"]] == [
        "system",
        *["user", "assistant"] * 2,
        "user",
    ]

    page.click("#conversations .rename")
    page.fill(".rename-field", "Pirate talk")
    page.keyboard.press("Enter")
    expect(page.locator("#conversations .name")).to_have_text("Pirate talk")
    expect(page.locator("#title")).to_have_text("Pirate talk")
    (stored,) = gw.conversations()
    assert stored["metadata"] == {"title": "Pirate talk"}
    shot(page, "renamed")

    page.click("#conversations .delete")
    expect(page.locator("#conversations .delete")).to_have_text("Delete?")
    shot(page, "delete-asks")
    page.click("#conversations .delete")
    expect(page.locator("#conversations li")).to_have_count(0)
    expect(page.locator(".msg")).to_have_count(0)  # the open conversation is gone too
    assert gw.conversations() == []
    assert gw.api("GET", f"/v1/conversations/{stored['id']}").status_code == 404
    shot(page, "deleted")


def test_the_sidebar_lists_newest_first_a_page_at_a_time(page: Page, gw: Gateway) -> None:
    for n in range(25):
        created = gw.api("POST", "/v1/conversations", json={"metadata": {"title": f"chat {n}"}})
        assert created.status_code == 200
    open_page(page, gw)
    names = page.locator("#conversations .name")
    expect(names).to_have_count(20)
    expect(names.first).to_have_text("chat 24")
    page.click("#more")
    expect(names).to_have_count(25)
    expect(names.last).to_have_text("chat 0")
    expect(page.locator("#more")).to_be_hidden()


def test_a_server_with_keys_asks_for_one_and_the_browser_keeps_it(page: Page, shot: Shot) -> None:
    with gateway(api_keys=[KEY]) as gw:
        page.goto(gw.url + "/")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-reason")).to_contain_text("API key")
        shot(page, "asks-for-key")
        page.fill("#key-input", "sk-wrong")
        page.click("#key-save")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-reason")).to_have_text("Incorrect API key provided.")
        shot(page, "wrong-key")
        page.fill("#key-input", KEY)
        page.click("#key-save")
        expect(dialog).to_be_hidden()
        expect(page.locator("#model option")).to_have_count(2)
        assert page.evaluate("localStorage.getItem('palaver.apiKey')") == KEY
        send(page, "hello with a key")
        wait_answered(page, 1)
        assert gw.upstream.chat_requests[-1].body["messages"][-1]["content"] == "hello with a key"
        page.reload()
        expect(page.locator("#model option")).to_have_count(2)
        expect(dialog).to_be_hidden()
        expect(page.locator("#conversations li")).to_have_count(1)
        shot(page, "key-kept")


XSS = '<img src=x onerror="window.pwned = 1"> and <script>window.pwned = 2</script>'


@pytest.mark.parametrize("csp", ["with the page's CSP", "with CSP bypassed"])
def test_html_from_a_model_is_shown_as_text_never_run(
    browser: Browser, gw: Gateway, shot: Shot, csp: str
) -> None:
    # With CSP bypassed, the rendering alone must keep the page safe.
    context = browser.new_context(bypass_csp=csp == "with CSP bypassed")
    page = context.new_page()
    try:
        open_page(page, gw)
        send(page, f"{XSS} [click](javascript:window.pwned=3) **bold**")
        wait_answered(page, 1)
        body = replies(page).last.locator(".body")
        expect(body).to_contain_text('<img src=x onerror="window.pwned = 1">')
        expect(body).to_contain_text("<script>window.pwned = 2</script>")
        expect(body.locator("strong")).to_have_text("bold")
        assert page.locator(".msg img, .msg script").count() == 0
        link = body.locator("a")
        if link.count():
            assert not (link.get_attribute("href") or "").startswith("javascript:")
            link.click()
        expect(page.locator(".msg.user .body")).to_contain_text("<img src=x")
        assert page.evaluate("window.pwned") is None
        shot(page, "html-as-text")
    finally:
        context.close()


def test_errors_are_shown_in_words_from_the_error_body(page: Page, gw: Gateway, shot: Shot) -> None:
    open_page(page, gw)
    gw.upstream.behave(
        status=429, error={"message": "Slow down, you are sending too fast.", "type": "tokens"}
    )
    send(page, "are you there?")
    error = page.locator(".msg.error")
    expect(error).to_contain_text("429")
    expect(error).to_contain_text("Slow down, you are sending too fast.")
    expect(page.locator(".msg.user.unsaved")).to_have_count(1)
    shot(page, "error")
    assert gw.conversations() == []


def test_on_a_phone_the_sidebar_is_a_drawer(page: Page, gw: Gateway, shot: Shot) -> None:
    page.set_viewport_size(PHONE)
    open_page(page, gw)
    send(page, "hello from a phone")
    wait_answered(page, 1)
    sidebar = page.locator("#sidebar")
    expect(page.locator("#menu")).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()
    composer = page.locator("#composer").bounding_box()
    assert composer is not None
    assert composer["width"] <= PHONE["width"]
    shot(page, "phone")
    page.click("#menu")
    expect(sidebar).to_be_in_viewport()
    expect(page.locator("#conversations li")).to_have_count(1)
    page.wait_for_timeout(300)  # the drawer's slide
    shot(page, "phone-drawer")
    page.click("#new-chat")
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator(".msg")).to_have_count(0)

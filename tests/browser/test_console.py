"""The web console in a real browser (headless Chromium) against a real server.

Each test drives the console as a person would (clicks, typing, keys) and
checks the result through the API, never through the console itself.
Waits are for conditions on the page (Playwright's auto-waiting locators),
never fixed sleeps.
"""
from __future__ import annotations

import re
import threading
import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DESKTOP, PHONE, SCREENSHOTS, WAIT_MS, Bus, wait_until
from tests.servers import free_port
from tests.tokens import token_cli

CTX = "console"
#: What the issue asks of the live tail: an event shows within a second of its publish.
TAIL_LATENCY_S = 1.0


def create_token(dsn: str, name: str, *scopes: str) -> str:
    done = token_cli("create", name, *(a for s in scopes for a in ("--scope", s)), dsn=dsn)
    return done.stdout.strip()


def open_channel(page, bus: Bus, channel: str, tab: str = "") -> None:
    page.goto(bus.ui(f"#/c/{CTX}/{channel}{tab}"))
    if not tab:
        expect(page.locator("#stream-state")).to_have_text("live")


def test_the_console_loads_with_its_security_headers_and_no_console_errors(page, bus):
    answer = bus.call("GET", "/ui/")
    assert answer.status == 200
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "connect-src 'self'" in answer.headers["Content-Security-Policy"]
    page.goto(bus.ui())
    expect(page).to_have_title("Channels · eventbus")
    expect(page.locator("h1")).to_have_text("Channels")
    expect(page.locator("#who")).to_contain_text("no token")  # local mode: none needed


def test_the_channels_view_lists_a_channel_published_to(page, bus, channel_name):
    for first, last in ((0, 1000), (1000, 1234)):  # --max-batch is 1000
        bus.publish(CTX, channel_name, [{"n": n} for n in range(first, last)])
    page.goto(bus.ui("#/channels"))
    expect(page.locator(f'#context-filter option[value="{CTX}"]')).to_have_count(1)
    page.select_option("#context-filter", CTX)
    row = page.locator(f'#channels-table tr[data-channel="{CTX}/{channel_name}"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("1,234")  # last id, formatted
    expect(row.locator("td").nth(3)).to_contain_text("s ago")
    row.get_by_role("link").click()
    expect(page.locator("h1")).to_contain_text(channel_name)
    expect(page.locator("#tail li.event").first).to_have_attribute("data-id", "1234")


def test_an_event_published_through_the_api_appears_in_the_tail_within_a_second(page, bus, channel_name):
    bus.publish(CTX, channel_name, {"n": 0})
    open_channel(page, bus, channel_name)
    expect(page.locator("#tail li.event")).to_have_count(1)
    for n in (1, 2, 3):
        published = time.monotonic()
        event = bus.publish(CTX, channel_name, {"n": n}, issuer=f"api-{n}")
        item = page.locator(f'#tail li.event[data-id="{event["id"]}"]')
        # a generous wait, so a slow event is measured rather than just missing
        item.wait_for(timeout=WAIT_MS)
        took = time.monotonic() - published
        assert took <= TAIL_LATENCY_S, (
            f"event {event['id']} took {took:.2f} s to appear in the tail (at most {TAIL_LATENCY_S} s)"
        )
        expect(item.locator(".issuer")).to_have_text(f"api-{n}")
    # newest on top
    ids = page.locator("#tail li.event").evaluate_all("items => items.map(i => Number(i.dataset.id))")
    assert ids == [4, 3, 2, 1]


def test_the_publish_form_stores_an_event_and_refuses_invalid_json(page, bus, channel_name, browsing):
    browsing.log.allow("status of 404", url="/channels/")  # the channel does not exist yet
    browsing.log.allow("status of 400", url="/events/")  # the refusal this test provokes
    open_channel(page, bus, channel_name)
    page.fill("#publish-issuer", "form-test")
    page.fill("#publish-payload", '{"order": 17, "big": 12345678901234567890}')
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#publish-result")).to_have_text("Stored as event #1.")
    stored = bus.get(f"/events/{CTX}/{channel_name}/1")
    assert stored["issuer"] == "form-test"
    assert stored["payload"] == {"order": 17, "big": 12345678901234567890}
    # the tail shows it as published (no float rounding of the big number)
    expect(page.locator('#tail li.event[data-id="1"] pre')).to_contain_text("12345678901234567890")

    # invalid JSON: refused in the page, nothing sent
    page.fill("#publish-payload", '{"order": 18,')
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#publish-result")).to_contain_text("Invalid JSON")
    expect(page.locator("#publish-payload")).to_have_attribute("aria-invalid", "true")
    page.fill("#publish-payload", "[1, 2]")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#publish-result")).to_contain_text("must be a JSON object")

    # valid JSON that the server refuses: its message, verbatim
    page.fill("#publish-payload", '{"a": 1, "a": 2}')
    page.get_by_role("button", name="Publish").click()
    refusal = bus.call("POST", f"/events/{CTX}/{channel_name}", b'{"a": 1, "a": 2}',
                       headers={"X-EVENT-ISSUER": "x"}).json()["error"]
    expect(page.locator("#publish-result .message")).to_have_text(refusal)
    expect(page.locator("#publish-result")).to_contain_text("(400)")
    assert bus.get(f"/channels/{CTX}/{channel_name}")["last_id"] == 1


#: Keeps every EventSource the page opens in window.__sources (injected by
#: the browser's debugging protocol, before the page's own scripts).
TRACK_EVENT_SOURCES = """
(() => {
  const Original = window.EventSource;
  window.__sources = [];
  window.EventSource = class extends Original {
    constructor(...args) { super(...args); window.__sources.push(this); }
  };
})();
"""


def test_pause_holds_the_tail_and_resume_catches_up_without_gaps(page, bus, channel_name):
    page.add_init_script(TRACK_EVENT_SOURCES)
    bus.publish(CTX, channel_name, {"n": 1})
    open_channel(page, bus, channel_name)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#stream-state")).to_have_text("paused")
    # paused: the stream is closed, so nothing can arrive
    assert page.evaluate("window.__sources.length > 0 && window.__sources.every(s => s.readyState === 2)")
    for n in (2, 3):
        bus.publish(CTX, channel_name, {"n": n})
    expect(page.locator("#tail li.event")).to_have_count(1)
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#stream-state")).to_have_text("live")
    expect(page.locator("#tail li.event")).to_have_count(3)
    ids = page.locator("#tail li.event").evaluate_all("items => items.map(i => Number(i.dataset.id))")
    assert ids == [3, 2, 1]


def test_the_issuer_filter_and_load_older_pages_back_through_history(page, bus, channel_name):
    bus.publish(CTX, channel_name, [{"n": n} for n in range(1, 31)], issuer="bulk")
    bus.publish(CTX, channel_name, {"n": 31}, issuer="other")
    open_channel(page, bus, channel_name)
    events = page.locator("#tail li.event")
    expect(events).to_have_count(20)  # the last page, replayed by the stream
    expect(events.first).to_have_attribute("data-id", "31")
    page.get_by_role("button", name="Load 20 older").click()
    expect(events).to_have_count(31)
    expect(events.last).to_have_attribute("data-id", "1")
    expect(page.locator("#load-older")).to_be_hidden()  # the first event is shown

    page.fill("#issuer-filter", "oth")
    expect(page.locator("#tail li.event:visible")).to_have_count(1)
    expect(page.locator("#shown-count")).to_have_text("1 of 31 shown")
    page.fill("#issuer-filter", "")
    expect(page.locator("#tail li.event:visible")).to_have_count(31)


def test_a_payload_with_markup_is_shown_as_text(page, bus, channel_name):
    markup = '<img src=x id=injected onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'
    bus.publish(CTX, channel_name, {"html": markup}, issuer="<i>issuer</i>")
    open_channel(page, bus, channel_name)
    item = page.locator('#tail li.event[data-id="1"]')
    expect(item.locator("pre")).to_contain_text(markup.replace('"', '\\"'))
    expect(item.locator(".issuer")).to_have_text("<i>issuer</i>")
    assert page.locator("#tail img, #tail script, #tail b, #tail i").count() == 0
    assert page.evaluate("window.__xss") is None


def test_the_consumers_view_shows_lag_and_retry_moves_a_dead_letter_back(page, bus, channel_name):
    consumer = f"/consumers/{CTX}/{channel_name}/billing"
    assert bus.call("PUT", consumer, {"mode": "shared", "max_deliveries": 1}).status == 201
    assert bus.call("PUT", f"/consumers/{CTX}/{channel_name}/audit", {}).status == 201
    for n in range(5):
        bus.publish(CTX, channel_name, {"n": n, "note": "<b>not bold</b>"})
    leased = bus.call("POST", f"{consumer}/next?timeout=0").json()
    # a nack of the last allowed delivery dead-letters the event
    assert bus.call("POST", f"{consumer}/nack", {"lease": leased["lease"]}).status == 204
    assert bus.get(consumer)["dead"] == 1

    page.goto(bus.ui(f"#/c/{CTX}/{channel_name}/consumers"))
    billing = page.locator('#consumers-table tr[data-consumer="billing"]')
    expect(billing.locator(".lag-value")).to_have_text("4")
    expect(page.locator('#consumers-table tr[data-consumer="audit"] .lag-value')).to_have_text("5")
    expect(billing.locator(".bar")).to_have_attribute("aria-label", "lag 4 events")
    billing.get_by_role("button", name="1 dead").click()
    letter = page.locator("#dead-letters li.event")
    expect(letter).to_have_count(1)
    expect(letter.locator("pre")).to_contain_text("<b>not bold</b>")
    letter.get_by_role("button", name="Retry").click()
    expect(billing.locator(".dead-count")).to_have_text("0")
    state = bus.get(consumer)
    assert (state["dead"], state["lag"]) == (0, 5), state
    assert bus.get(f"{consumer}/dead") == []


def test_retry_all_puts_every_dead_letter_back(page, bus, channel_name):
    consumer = f"/consumers/{CTX}/{channel_name}/billing"
    bus.call("PUT", consumer, {"mode": "shared", "max_deliveries": 1})
    for n in range(3):
        bus.publish(CTX, channel_name, {"n": n})
    for _ in range(3):
        leased = bus.call("POST", f"{consumer}/next?timeout=0").json()
        assert bus.call("POST", f"{consumer}/nack", {"lease": leased["lease"]}).status == 204
    page.goto(bus.ui(f"#/c/{CTX}/{channel_name}/consumers"))
    page.get_by_role("button", name="3 dead").click()
    expect(page.locator("#dead-letters li.event")).to_have_count(3)
    page.get_by_role("button", name="Retry all").click()
    expect(page.locator('#consumers-table tr[data-consumer="billing"] .dead-count')).to_have_text("0")
    assert bus.get(consumer)["dead"] == 0


def test_a_disabled_webhook_shows_as_disabled_and_enable_reactivates_it(page, bus, channel_name, receiver):
    receiver.failing = True
    sub = bus.call("POST", "/subscriptions", {"context": CTX, "channel": channel_name,
                                               "url": receiver.url, "start": "earliest"}).json()
    bus.publish(CTX, channel_name, {"n": 1})
    page.goto(bus.ui("#/webhooks"))
    row = page.locator(f'#webhooks-table tr[data-subscription="{sub["id"]}"]')
    # --webhook-disable-after 1: it fails for a second, then is disabled
    expect(row.locator(".status")).to_have_text("disabled", timeout=30_000)
    expect(row.locator(".error-text")).to_contain_text("HTTP 500")
    receiver.failing = False
    row.get_by_role("button", name="Enable").click()
    expect(page.locator("#webhook-action")).to_contain_text(f"Subscription {sub['id']} is active again")
    expect(row.locator(".status")).to_have_text("active")
    state = bus.get(f"/subscriptions/{sub['id']}")
    assert state["status"] == "active" and state["disabled_at"] is None, state


def test_a_new_webhook_shows_its_secret_once(page, bus, channel_name, receiver):
    page.goto(bus.ui("#/webhooks"))
    page.fill("#new-context", CTX)
    page.fill("#new-channel", channel_name)
    page.fill("#new-url", receiver.url)
    page.get_by_role("button", name="Create").click()
    secret = page.locator("#new-secret")
    expect(secret).to_have_text(re.compile(r"^whsec_[A-Za-z0-9+/=]{40,}$"))
    created = [s for s in bus.get("/subscriptions") if s["channel"] == channel_name]
    assert len(created) == 1 and "secret" not in created[0]
    page.get_by_role("button", name="I have stored it").click()
    expect(secret).to_have_count(0)
    page.reload()
    expect(page.locator(f'#webhooks-table tr[data-subscription="{created[0]["id"]}"]')).to_be_visible()
    assert "whsec_" not in page.content()


def test_the_console_works_from_the_keyboard(page, bus, channel_name):
    bus.publish(CTX, channel_name, {"n": 1})
    page.goto(bus.ui("#/channels"))
    page.fill("#channel-filter", channel_name)
    link = page.locator(f'#channels-table tr[data-channel="{CTX}/{channel_name}"] a')
    expect(link).to_be_visible()
    # from the filter, Tab reaches the channel's link; Enter opens it
    page.focus("#channel-filter")
    for _ in range(10):
        page.keyboard.press("Tab")
        if link.evaluate("a => a === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the channel's link")
    page.keyboard.press("Enter")
    expect(page.locator("#stream-state")).to_have_text("live")
    expect(page.locator("h1")).to_be_focused()
    page.focus("#publish-payload")
    page.keyboard.press("Control+a")
    page.keyboard.type('{"typed": true}')
    page.keyboard.press("Tab")  # to the Publish button
    page.keyboard.press("Enter")
    expect(page.locator("#publish-result")).to_have_text("Stored as event #2.")


def test_retention_is_shown_and_changed_from_the_channel_view(page, bus, channel_name):
    bus.publish(CTX, channel_name, {"n": 1})
    open_channel(page, bus, channel_name)
    shown = page.locator("#retention")
    expect(shown).to_contain_text("keep all")
    expect(shown).to_contain_text("server default")
    page.get_by_text("Change retention").click()
    page.fill("#retention-max-events", "500")
    page.fill("#retention-max-age", "86400")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#retention-result")).to_have_text("Saved.")
    expect(shown).to_contain_text("500")
    expect(shown).to_contain_text("1 d")
    retention = bus.get(f"/channels/{CTX}/{channel_name}")["retention"]
    assert (retention["max_age"], retention["max_events"]) == (86400, 500), retention
    # emptied: back to the server's default
    page.fill("#retention-max-events", "")
    page.get_by_role("button", name="Save").click()
    expect(shown.locator("div").nth(1)).to_contain_text("keep all")
    assert bus.get(f"/channels/{CTX}/{channel_name}")["retention"]["max_events"] is None


def test_a_tail_resumed_after_retention_pruned_its_place_says_what_it_missed(page, bus, channel_name):
    bus.publish(CTX, channel_name, [{"n": n} for n in range(1, 4)])
    open_channel(page, bus, channel_name)
    expect(page.locator("#tail li.event")).to_have_count(3)
    page.get_by_role("button", name="Pause").click()
    bus.publish(CTX, channel_name, [{"n": n} for n in range(4, 31)])
    path = f"/channels/{CTX}/{channel_name}"
    assert bus.call("PATCH", path, {"retention": {"max_events": 5}}).status == 200
    wait_until(lambda: bus.get(path)["first_id"] == 26, "pruned to the last 5 events")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".notes")).to_contain_text("22 events before #26 were removed by retention.")
    expect(page.locator("#tail li.event").first).to_have_attribute("data-id", "30")
    expect(page.locator("#tail li.event")).to_have_count(8)  # 1-3, then 26-30
    expect(page.locator("#load-older")).to_be_hidden()


def test_a_token_protected_server_asks_for_a_token_and_shows_what_it_may_not_do(
        browsing, locked_bus, dsn, channel_name):
    browsing.log.allow("status of 401")  # the console's first calls, before the token
    browsing.log.allow("status of 403", url="/events/")  # the publish this test tries
    writer = create_token(dsn, f"writer-{channel_name}", f"publish:{CTX}/*")
    reader = create_token(dsn, f"reader-{channel_name}", f"read:{CTX}/*")
    locked_bus.publish(CTX, channel_name, {"n": 1}, token=writer)
    page = browsing.page()
    page.goto(locked_bus.ui(f"#/c/{CTX}/{channel_name}"))
    expect(page.locator("h1")).to_have_text("Sign in")
    expect(page.locator("#sign-in-problem")).to_contain_text("needs a token")

    page.fill("#token", "ebt_" + "x" * 43)  # well-formed, unknown
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-problem")).to_contain_text("invalid, expired or revoked token")

    page.fill("#token", reader)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#stream-state")).to_have_text("live")  # EventSource with access_token
    expect(page.locator('#tail li.event[data-id="1"]')).to_be_visible()
    locked_bus.publish(CTX, channel_name, {"n": 2}, token=writer)
    expect(page.locator('#tail li.event[data-id="2"]')).to_be_visible()
    expect(page.locator("#who")).to_contain_text(f"token …{reader[-4:]}")

    page.fill("#publish-payload", '{"n": 3}')
    page.get_by_role("button", name="Publish").click()
    result = page.locator("#publish-result")
    expect(result).to_contain_text("Forbidden (403)")
    expect(result.locator(".message")).to_have_text(f"token 'reader-{channel_name}' lacks the scope publish:{CTX}/{channel_name}")
    assert locked_bus.get(f"/channels/{CTX}/{channel_name}", token=reader)["last_id"] == 2

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("h1")).to_have_text("Sign in")
    assert page.evaluate("sessionStorage.getItem('eventbus.token')") is None


# -- the looks: every view at a laptop's and a phone's width, light and dark -----------------
SHOP = "shop"


@pytest.fixture
def showcase(bus, receiver, channel_name):
    """A small, lively bus: channels with events, consumers behind, webhooks ok and failing."""
    suffix = channel_name.rsplit("-", 1)[1]
    orders, payments, mails = f"orders{suffix}", f"payments{suffix}", f"emails{suffix}"
    bus.publish(SHOP, orders, [{"order": 1000 + n, "total": {"amount": "19.90", "currency": "EUR"},
                                "lines": [{"sku": f"SKU-{n}", "qty": 1 + n % 3}]} for n in range(40)],
                issuer="checkout")
    bus.publish(SHOP, payments, [{"order": 1000 + n, "status": "captured"} for n in range(12)], issuer="psp")
    bus.publish(SHOP, mails, {"to": "ada@example.com", "template": "receipt"}, issuer="mailer")
    base = f"/consumers/{SHOP}/{orders}"
    bus.call("PUT", f"{base}/billing", {"mode": "shared", "max_deliveries": 1})
    bus.call("PUT", f"{base}/analytics", {"mode": "ordered"})
    bus.call("PUT", f"{base}/search-index", {"mode": "ordered", "start": "latest"})
    for _ in range(12):  # billing handles a few, and two fail for good
        leased = bus.call("POST", f"{base}/billing/next?timeout=0").json()
        bus.call("POST", f"{base}/billing/ack", {"lease": leased["lease"]})
    for _ in range(2):
        leased = bus.call("POST", f"{base}/billing/next?timeout=0").json()
        bus.call("POST", f"{base}/billing/nack", {"lease": leased["lease"]})
    good = bus.call("POST", "/subscriptions", {"context": SHOP, "channel": payments,
                                                "url": receiver.url, "start": "earliest"}).json()
    bad = bus.call("POST", "/subscriptions", {"context": SHOP, "channel": orders,
                                               "url": f"http://127.0.0.1:{free_port()}/gone",
                                               "start": "earliest"}).json()
    wait_until(lambda: bus.get(f"/subscriptions/{bad['id']}")["status"] == "disabled", "disabled")
    wait_until(lambda: bus.get(f"/subscriptions/{good['id']}")["lag"] == 0, "delivered")
    return {"orders": orders, "payments": payments}


def no_horizontal_scroll(page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} is {overflow} px wider than the {page.viewport_size['width']} px screen"


def test_every_view_fits_a_laptop_and_a_phone_in_light_and_dark(browsing, bus, showcase):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    orders = showcase["orders"]
    publishing = threading.Event()

    def publish_now_and_then() -> None:  # a live rate for the channels view
        n = 0
        while not publishing.wait(0.2):
            n += 1
            bus.publish(SHOP, orders, {"order": 2000 + n, "total": {"amount": "5.00", "currency": "EUR"}},
                        issuer="checkout")

    publisher = threading.Thread(target=publish_now_and_then, daemon=True)
    publisher.start()
    try:
        views = [
            ("channels", "#/channels", "#channels-table tbody tr"),
            ("channel", f"#/c/{SHOP}/{orders}", "#tail li.event"),
            ("consumers", f"#/c/{SHOP}/{orders}/consumers", "#consumers-table tbody tr"),
            ("webhooks", "#/webhooks", "#webhooks-table tbody tr"),
        ]
        for viewport, scheme, suffix in ((DESKTOP, "light", ""), (PHONE, "light", "-phone"), (DESKTOP, "dark", "-dark")):
            page = browsing.page(viewport, scheme)
            for name, fragment, ready in views:
                page.goto(bus.ui(fragment))
                expect(page.locator(ready).first).to_be_visible()
                if name == "channels":
                    page.select_option("#context-filter", SHOP)
                    # a few reads of the busy channel: its rate is known, its sparkline drawn
                    busy = page.locator(f'tr[data-channel="{SHOP}/{orders}"]')
                    expect(busy.locator("td.rate")).not_to_have_text("—")
                    expect(busy.locator("svg.sparkline polyline")).to_have_count(1, timeout=30_000)
                if name == "consumers":
                    page.get_by_role("button", name="2 dead").click()
                    expect(page.locator("#dead-letters li.event")).to_have_count(2)
                if name == "channel":
                    expect(page.locator("#stream-state")).to_have_text("live")
                no_horizontal_scroll(page)
                page.screenshot(path=str(SCREENSHOTS / f"console-{name}{suffix}.png"))
    finally:
        publishing.set()
        publisher.join()


def test_payloads_are_reindented_without_being_reencoded(page, bus):
    """dom.js cuts payloads out of the API's text and re-indents them: numbers,
    escapes and key order stay exactly as published (JSON.parse would not)."""
    payload = (r'{"z":1.50,"a":"}{,:[]\"","big":123456789012345678901234567890,'
               r'"n":[1e400, {} ,[ ]],"o":{ "p" : null }}')
    event = r'{"id":7,"issuer":"x","context":"c","channel":"d","timestamp":1.5,"payload":' + payload + "}"
    page.goto(bus.ui())
    expect(page.locator("h1")).to_have_text("Channels")
    result = page.evaluate("""async (event) => {
      const dom = await import("./dom.js");
      const read = dom.readEvent(event);
      return {
        payload: read.payloadText,
        pretty: dom.pretty(read.payloadText),
        parts: [...dom.rawParts('[ {"a": 1} , "s,]" ,3 ]')],
        empty: dom.pretty('{ }'),
      };
    }""", event)
    assert result["payload"] == payload
    assert result["pretty"] == "\n".join([
        "{",
        '  "z": 1.50,',
        r'  "a": "}{,:[]\"",',
        '  "big": 123456789012345678901234567890,',
        '  "n": [',
        "    1e400,",
        "    {},",
        "    []",
        "  ],",
        '  "o": {',
        '    "p": null',
        "  }",
        "}",
    ])
    assert result["parts"] == ['{"a": 1}', '"s,]"', "3"]
    assert result["empty"] == "{}"

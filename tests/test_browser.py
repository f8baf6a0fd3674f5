"""The live page in a real headless Chromium (system package, driven by Playwright) with a fake camera.

The camera is a .y4m clip of the astronaut photo built here; the page is served by a real uvicorn on loopback and
streams frames over WS /ws. Skips, saying why, where Chromium or Playwright is missing.

What is drawn is checked in the canvases' pixels: one colour per expression (the legend's) on boxes, charts and
summary bars; each timeline bar split as the per-second shares recomputed here from the CSV (live) or from the
API's answer for the same video; the summary equal to the average of the bars and, for a video, to the server's
summary.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest
from conftest import FERPLUS_LABELS, LiveServer, make_settings
from y4m import astronaut_frame, jpeg, write_y4m

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("EMOTION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is missing ({CHROMIUM}); install it with `apt-get install -y chromium`", allow_module_level=True
    )


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = astronaut_frame(640, 480)
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", [frame] * 25, fps=25)


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        yield playwright


def chromium_args(clip: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]


@pytest.fixture(scope="module")
def browser(playwright, camera_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Chromium with a fresh, empty profile and the clip as its camera."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("profile")),
        executable_path=CHROMIUM,
        headless=True,
        args=chromium_args(camera_clip),
        viewport={"width": 1280, "height": 1000},
        accept_downloads=True,
    )
    try:
        yield context
    finally:
        context.close()


@contextmanager
def open_page(context, url: str, allowed_console: tuple[str, ...] = ()) -> Iterator[object]:
    """A page of the service; fails the test if the console shows an error (other than ones containing one of
    `allowed_console`, e.g. a 4xx the test asks for) or a script throws."""
    problems: list[str] = []
    page = context.new_page()
    page.on(
        "console",
        lambda m: (
            m.type == "error"
            and not any(text in m.text for text in allowed_console)
            and problems.append(f"console: {m.text}")
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(url + "/")
    # Labels come from GET /model.
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')", timeout=10_000)
    yield page
    page.close()
    assert not problems, problems


@pytest.fixture
def page(browser, live_server) -> Iterator[object]:
    with open_page(browser, live_server.url) as page:
        yield page


NO_FACE = "no face"


def test_live_page_labels_the_face(page) -> None:
    labels = page.evaluate("fetch('/model').then(r => r.json()).then(m => m.labels)")
    assert "never stored" in page.inner_text(".privacy-notice")

    page.click("#camera-toggle")
    page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
    page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2", timeout=15_000)
    assert page.inner_text("#stat-fps") != "–"
    assert page.inner_text("#stat-rtt").endswith("ms")
    assert page.inner_text("#camera-toggle") == "Stop camera"
    assert page.inner_text("#summary-text").startswith("Face 1 showed ")
    assert page.is_enabled("#csv-download") and page.is_enabled("#report-download")

    # The box, its colour and the "Current:" line describe the face the same way (the photo is still, so the
    # label holds from frame to frame).
    shown = page.get_attribute("#current-labels", "data-labels").split(",")
    assert len(shown) == 1 and shown[0] in labels, shown
    # The face is tracked: the box and the "Current:" line name it by its person number, not a colour of its own.
    assert page.inner_text("#current-labels").startswith(f"#1 {shown[0]} ")
    assert json.loads(page.get_attribute("#overlay", "data-frame"))["people"] == [1]
    colours = legend_colours(page, "#timeline-legend")
    assert list(colours) == [*labels, NO_FACE]
    assert len(set(colours.values())) == len(colours), "two categories share a colour"
    check_overlay_alignment(page, colours[shown[0]])

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)

    page.click("#camera-toggle")
    assert page.inner_text("#camera-toggle") == "Start camera"
    assert page.get_attribute("#current-labels", "data-labels") == ""

    csv = download_csv(page)
    header = csv.splitlines()[0].split(",")
    assert header[:7] == ["time_s", "timestamp", "frame_id", "face_index", "person", "track_id", "emotion"]
    assert [f"p_{label}" for label in labels] == header[-len(labels) :]
    rows = [line.split(",") for line in csv.splitlines()[1:]]
    faces = [row for row in rows if row[3] != ""]
    assert len(faces) >= 2
    for row in faces:
        assert row[6] in labels and row[3] == "0"  # one face, index 0
        assert row[4] == "1" and row[5] == "1"  # one person, one track on the one connection
        probabilities = [float(p) for p in row[-len(labels) :]]
        assert abs(sum(probabilities) - 1) < 0.01 and row[6] == labels[probabilities.index(max(probabilities))]
    check_timeline_and_summary(page, "#timeline", "#summary-bars", csv_shares(csv), colours)

    # The person selector lists the one person; following them shows their own timeline and summary.
    assert page.eval_on_selector("#person-select", "s => [...s.options].map(o => o.value)") == ["", "1"]
    page.select_option("#person-select", "1")
    assert page.inner_text("#summary-text").startswith("Person #1 showed ")
    assert page.inner_text("#timeline-title") == "Timeline: expression of Person #1"
    check_timeline_and_summary(page, "#timeline", "#summary-bars", csv_shares(csv, person="1"), colours)
    page.select_option("#person-select", "")
    assert page.inner_text("#summary-text").startswith("Face 1 showed ")

    report = download_png(page, "#report-download")
    assert report.shape[1] == 1200 and 600 <= report.shape[0] <= 1400, report.shape
    # The report's chart shows the session's expression in its colour, over a good part of the image.
    assert colour_pixels(report, colours[shown[0]]) > 20_000


def accessible_node(page, selector: str) -> tuple[str, str, dict[str, object]]:
    """Role, name and states of an element as Chromium's accessibility tree hands them to a screen reader."""
    cdp = page.context.new_cdp_session(page)
    try:
        element = cdp.send("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        tree = cdp.send("Accessibility.getPartialAXTree", {"objectId": element["result"]["objectId"]})
    finally:
        cdp.detach()
    node = tree["nodes"][0]
    states = {p["name"]: p["value"].get("value") for p in node.get("properties", [])}
    return node["role"]["value"], node["name"]["value"], states


def test_camera_button_is_named_for_what_a_press_does(page) -> None:
    """The camera button says what pressing it does, and nothing else: it was also a toggle (aria-pressed), which a
    screen reader read as "Stop camera, pressed" (WAI-ARIA APG: a toggle button keeps its label)."""
    role, name, states = accessible_node(page, "#camera-toggle")
    assert (role, name) == ("button", "Start camera") and "pressed" not in states, states
    page.click("#camera-toggle")
    page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
    role, name, states = accessible_node(page, "#camera-toggle")
    assert (role, name) == ("button", "Stop camera") and "pressed" not in states, states
    page.click("#camera-toggle")
    role, name, states = accessible_node(page, "#camera-toggle")
    assert (role, name) == ("button", "Start camera") and "pressed" not in states, states


def test_report_of_a_followed_person_keeps_its_table_header_apart(page) -> None:
    """The report of a session following person #1: the table's first header ("Expression of Person #1") ends
    before the bar column's header begins; it ran into "Share of analysed time"."""
    page.click("#camera-toggle")
    page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2", timeout=15_000)
    page.click("#camera-toggle")
    page.select_option("#person-select", "1")
    report = download_png(page, "#report-download").astype(int)
    # The table's bar tracks (#eceef2): the first one's top is 7 px above its row's middle, its left edge is the
    # bar column; the header row's middle is one row (26 px) higher.
    ys, xs = np.nonzero(np.all(report == (236, 238, 242), axis=-1))
    bar_x, middle = int(xs.min()), int(ys.min()) + 7 - 26
    ink = np.nonzero((report[middle - 8 : middle + 9].max(axis=-1) < 200).any(axis=0))[0]
    # The first header: ink from the left margin up to the first gap wider than a space.
    end = next((int(a) for a, b in zip(ink, ink[1:], strict=False) if b - a > 8), int(ink[-1]))
    assert ink[0] < bar_x and end < bar_x, (int(ink[0]), end, bar_x)


def test_following_a_person_renames_the_summary_hint_and_the_chart(page) -> None:
    """Following person #1, the summary's hint and the timeline's accessible name say whose expression they show,
    as the title and the sentence do (they kept saying "face 1")."""
    page.click("#camera-toggle")
    page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2", timeout=15_000)
    page.click("#camera-toggle")
    page.select_option("#person-select", "1")
    assert page.inner_text("#summary-text").startswith("Person #1 showed ")
    hint, label = page.inner_text("#summary-panel .hint"), page.get_attribute("#timeline", "aria-label")
    assert "Person #1" in hint and "face 1" not in hint, hint
    assert label.endswith("expression of Person #1"), label
    page.select_option("#person-select", "")
    assert "expression of face 1" in page.inner_text("#summary-panel .hint")
    assert page.get_attribute("#timeline", "aria-label").endswith("expression of face 1")


def test_max_faces_over_the_limit_is_held_to_it(page) -> None:
    """Typing 50 in "Max faces" (its max is the server's limit, by default 32): the input shows 32 and the stream
    goes on with it, instead of keeping 50 on show while the server refuses it and goes on with its default."""
    from server.config import Settings

    assert page.get_attribute("#max-faces", "max") == str(Settings.model_fields["max_faces"].default)
    page.click("#camera-toggle")
    page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
    # Results after the config message: the server answers it (an ack, or an error) before the frames sent after it.
    page.evaluate("""() => { window.results = 0; new MutationObserver(() => window.results++)
        .observe(document.getElementById('current-labels'), {childList: true}); }""")
    page.fill("#max-faces", "50")
    page.press("#max-faces", "Tab")
    page.wait_for_function("window.results >= 5", timeout=15_000)
    assert page.input_value("#max-faces") == "32"
    assert "error" not in page.get_attribute("#live-status", "class"), page.inner_text("#live-status")
    assert page.get_attribute("#current-labels", "data-labels") != ""
    page.click("#camera-toggle")


@pytest.mark.parametrize("limit", [3, 64])
def test_max_faces_offers_the_servers_limit(browser, model_path, limit: int) -> None:
    """ "Max faces" offers what this server takes (EMOTION_MAX_FACES, GET /model's max_faces). Its max was 32 whatever
    the server's limit: a server limited to 3 refused the page's 10 at the start of every stream, and one that takes
    64 could not be asked for more than 32."""
    from server.app import create_app

    with (
        LiveServer(create_app(make_settings(model_path, "haar", max_faces=limit))) as server,
        open_page(browser, server.url) as page,
    ):
        assert page.get_attribute("#max-faces", "max") == str(limit)
        assert page.input_value("#max-faces") == str(min(10, limit))  # the page's 10, brought down to the limit
        page.click("#camera-toggle")
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        assert "error" not in page.get_attribute("#live-status", "class"), page.inner_text("#live-status")
        page.evaluate("""() => { window.results = 0; new MutationObserver(() => window.results++)
            .observe(document.getElementById('current-labels'), {childList: true}); }""")
        page.fill("#max-faces", "50")
        page.press("#max-faces", "Tab")
        page.wait_for_function("window.results >= 5", timeout=15_000)  # the config's answer came before these
        assert page.input_value("#max-faces") == str(min(50, limit))
        assert "error" not in page.get_attribute("#live-status", "class"), page.inner_text("#live-status")
        page.click("#camera-toggle")


def test_live_timeline_shows_no_face_stretches_on_a_phone(
    playwright, live_server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A camera that shows a face for a second, then an empty picture for a second, on a 390x844 phone screen:
    the timeline draws each second's split between the expression and grey "no face" as the CSV says, and the
    summary is the average of those bars."""
    face = astronaut_frame(640, 480)
    empty = np.full_like(face, 96)
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "blinking.y4m", [face] * 10 + [empty] * 10, fps=10)
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("profile")),
        executable_path=CHROMIUM,
        headless=True,
        args=chromium_args(clip),
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        accept_downloads=True,
    )
    try:
        with open_page(context, live_server.url) as page:
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
            page.click("#camera-toggle")
            page.wait_for_function(
                """() => { const bars = [...document.querySelectorAll('#summary-bars .bar')];
                    return bars.length && Number(bars.at(-1).dataset.share) > 0
                        && Number(document.getElementById('timeline').dataset.points) >= 4; }""",
                timeout=20_000,
            )
            page.click("#camera-toggle")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            for selector in ("#video", "#timeline", "#summary-bars"):
                box = page.locator(selector).bounding_box()
                assert box and box["width"] > 200 and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
            colours = legend_colours(page, "#timeline-legend")
            csv = download_csv(page)
            shares = csv_shares(csv)
            summary = check_timeline_and_summary(page, "#timeline", "#summary-bars", shares, colours)
            assert 0.2 < summary[NO_FACE] < 0.8, summary
            # Following person #1: their expression while in view, "no face" (not in view) for the rest, from the
            # frames before they appeared to those after their track ended.
            people = sorted({row.split(",")[4] for row in csv.splitlines()[1:]} - {""}, key=int)
            options = page.eval_on_selector("#person-select", "s => [...s.options].map(o => o.value)")
            assert options == ["", *people] and people[0] == "1", (options, people)
            page.select_option("#person-select", "1")
            own = check_timeline_and_summary(page, "#timeline", "#summary-bars", csv_shares(csv, person="1"), colours)
            assert own[NO_FACE] > summary[NO_FACE], (own, summary, people)
            assert page.inner_text("#summary-text").startswith("Person #1 showed ")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "live-phone.png"), full_page=True)
    finally:
        context.close()


def test_page_says_what_a_label_is(page) -> None:
    note = page.inner_text(".labels-note")
    assert "facial expression" in note and "not what the person feels" in note
    assert "AI Act" in note and "workplace" in note and "education" in note
    card = page.request.get(page.locator("#model-card-link").evaluate("a => a.href"))
    assert card.status == 200 and card.headers["content-type"].startswith("text/plain")
    assert card.text().startswith("# Model card")


def test_image_upload_draws_faces(page, tmp_path: Path) -> None:
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    page.set_input_files("#image-file", str(photo))
    page.click("#image-form button[type=submit]")
    page.wait_for_function("document.getElementById('image-status').textContent.includes('found')", timeout=15_000)
    assert page.inner_text("#image-status").startswith("1 face found in a 512×512 image")
    assert page.is_visible("#image-canvas")
    assert page.evaluate("document.getElementById('image-canvas').width") == 512
    assert page.locator("#image-faces li").count() == 1
    # The box on the picture is in its expression's colour, the one the legends use.
    emotion = page.inner_text("#image-faces li").split()[0]
    colours = legend_colours(page, "#timeline-legend")
    assert emotion in colours
    assert canvas_colour_pixels(page, "#image-canvas", colours[emotion]) > 200
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#image-panel").screenshot(path=str(ARTIFACTS / "image-upload.png"))


def test_box_caption_text_is_readable_on_the_angry_colour(browser, make_model, tmp_path: Path) -> None:
    """A face labelled angry: its caption is written in near-black on the vermillion tag (5.4:1), not in white
    (3.9:1, under WCAG's 4.5:1 for text of this size)."""
    from server.app import create_app

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    angry = make_model("angry.onnx", favour="angry")
    with LiveServer(create_app(make_settings(angry, "haar"))) as server, open_page(browser, server.url) as page:
        page.set_input_files("#image-file", str(photo))
        page.click("#image-form button[type=submit]")
        page.wait_for_function("document.getElementById('image-status').textContent.includes('found')")
        item = page.inner_text("#image-faces li")
        assert item.startswith("angry "), item
        x, y = (int(v) for v in item.split("box at ")[1].split(" ")[0].split(","))
        # The caption's tag (overlay.drawFace on a 512 px image: 14 px font, 3 px padding, 20 px high) sits on the
        # box's top edge, above it where there is room.
        top = y - 20 if y >= 20 else y
        tag = canvas_pixels(page, "#image-canvas", max(0, x - 1), 60)[top + 3 : top + 17].astype(int)
        assert colour_pixels(tag, legend_colours(page, "#timeline-legend")["angry"]) > 200  # the tag is there
        light = int((tag.min(axis=-1) > 200).sum())
        dark = int((tag.max(axis=-1) < 80).sum())
        assert dark > 20 and light == 0, (dark, light)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_primary_buttons_are_readable_in_both_colour_schemes(page, scheme: str) -> None:
    """The text of the primary buttons (Start camera, Analyse image, Analyse video) on the accent colour has WCAG's
    4.5:1 contrast in the light and the dark scheme (the dark scheme's light blue took white text at 2.5:1)."""
    page.emulate_media(color_scheme=scheme)

    def luminance(rgb: tuple[int, int, int]) -> float:
        c = [v / 255 for v in rgb]
        r, g, b = (v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    buttons = page.evaluate("""[...document.querySelectorAll('button.primary')].map(b =>
        [b.textContent, getComputedStyle(b).color, getComputedStyle(b).backgroundColor])""")
    assert len(buttons) == 3, buttons
    for text, colour, background in buttons:
        lighter, darker = sorted((luminance(css_rgb(colour)), luminance(css_rgb(background))), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (scheme, text, colour, background)


def test_image_refused_after_another_hides_the_last_image(browser, live_server, tmp_path: Path) -> None:
    """An image the server refuses after one it analysed: the error is shown without the last image and its faces."""
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with open_page(browser, live_server.url, allowed_console=("status of 400",)) as page:
        page.set_input_files("#image-file", str(photo))
        page.click("#image-form button[type=submit]")
        page.wait_for_function("document.getElementById('image-status').textContent.includes('found')")
        assert page.is_visible("#image-canvas")
        page.set_input_files("#image-file", str(text))
        page.click("#image-form button[type=submit]")
        page.wait_for_function("document.getElementById('image-status').textContent.startsWith('Could not analyse')")
        assert not page.is_visible("#image-canvas") and page.locator("#image-faces li").count() == 0


def test_an_older_image_answer_arriving_late_does_not_replace_the_newer_one(page, live_server, tmp_path: Path) -> None:
    """Two images sent one after the other, the first answer held back 1.5 s: the panel shows the second image's."""
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 200, 3), 127, np.uint8))
    page.evaluate("""() => {
        const realFetch = window.fetch;
        let calls = 0;
        window.fetch = (...args) => {
            const delay = calls++ === 0 ? 1500 : 0;
            return new Promise((resolve) => setTimeout(resolve, delay)).then(() => realFetch(...args));
        };
    }""")
    page.set_input_files("#image-file", str(photo))
    page.click("#image-form button[type=submit]")
    page.set_input_files("#image-file", str(blank))
    page.click("#image-form button[type=submit]")
    page.wait_for_function("document.getElementById('image-status').textContent.includes('found')")
    page.wait_for_timeout(2500)  # the first answer has come (and gone) by now
    assert page.inner_text("#image-status") == "0 faces found in a 200×120 image."
    assert page.locator("#image-faces li").count() == 0


def test_video_upload_chart_agrees_with_the_server(page, live_server, tmp_path: Path) -> None:
    """A real video (face, face, nothing, face): the bars drawn, the page's summary and the summary of
    POST /predict/video for the same file tell the same story."""
    if "/predict/video" not in live_server.app.openapi()["paths"]:
        pytest.skip("this build has no POST /predict/video route")
    clip = tmp_path / "astronaut.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    face = cv2.cvtColor(astronaut_frame(640, 480), cv2.COLOR_RGB2BGR)
    empty = np.full_like(face, 96)
    for picture in (face, face, empty, face):  # 4 s
        for _ in range(10):
            writer.write(picture)
    writer.release()

    with clip.open("rb") as f:
        answer = httpx.post(f"{live_server.url}/predict/video", files={"file": f}, timeout=60).json()
    assert [len(f["faces"]) > 0 for f in answer["frames"]] == [True, True, False, True]
    server = answer["summary"]
    expected = {label: p * server["with_face"] / server["sampled"] for label, p in server["emotion_share"].items()}
    expected[NO_FACE] = server["without_face"] / server["sampled"]

    page.set_input_files("#video-file", str(clip))
    page.click("#video-form button[type=submit]")
    page.wait_for_function("document.getElementById('video-status').textContent.startsWith('Done')", timeout=30_000)
    assert int(page.get_attribute("#video-chart", "data-points")) == 4
    colours = legend_colours(page, "#video-legend")
    per_sample = {
        round(f["t"]): Counter([f["faces"][0]["emotion"] if f["faces"] else NO_FACE]) for f in answer["frames"]
    }
    summary = check_timeline_and_summary(page, "#video-chart", "#video-bars", per_sample, colours)
    assert set(summary) == set(expected)
    for category, share in expected.items():
        assert summary[category] == pytest.approx(share, abs=1e-9), category
    dominant = server["dominant_emotion"]
    assert page.inner_text("#video-summary").startswith(f"Face 1 showed {dominant} most: 75% ")
    # The server tracked one face through the missed sample (grace of two samples): one person, listed by the page in
    # the same quantity (share of the video's analysed time), from the summary's per-track entry.
    assert {face["track_id"] for f in answer["frames"] for face in f["faces"]} == {1}
    (track,) = server["tracks"]
    assert track["samples"] == 3 and track["track_id"] == 1
    people = page.locator("#video-people li")
    assert people.count() == 1
    own = track["emotion_share"][track["dominant_emotion"]] * track["samples"] / server["sampled"]
    assert float(people.first.get_attribute("data-share")) == pytest.approx(own, abs=1e-9)
    assert people.first.inner_text().startswith("Person #1: in view ")
    assert f"showed {track['dominant_emotion']} most: {round(own * 100)}% " in people.first.inner_text()

    report = download_png(page, "#video-report")
    assert report.shape[1] == 1200 and report.shape[0] >= 600
    assert colour_pixels(report, colours[NO_FACE]) > 5_000 and colour_pixels(report, colours[dominant]) > 5_000
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#video-panel").screenshot(path=str(ARTIFACTS / "video-upload.png"))


def test_video_legend_lists_the_models_expressions_before_any_video(page) -> None:
    """The video panel's legend, before a video is analysed, is the timeline's: the model's expressions and "no face",
    in the same colours (it listed "no face" alone)."""
    labels = page.evaluate("fetch('/model').then(r => r.json()).then(m => m.labels)")
    colours = legend_colours(page, "#video-legend")
    assert list(colours) == [*labels, NO_FACE]
    assert colours == legend_colours(page, "#timeline-legend")


def test_a_new_video_upload_takes_over_the_panel(page, live_server, tmp_path: Path) -> None:
    """Analysing another video while one streams: the first one's abort must not say "Cancelled." over the second
    one or disable the second one's Cancel button."""
    if "/predict/video" not in live_server.app.openapi()["paths"]:
        pytest.skip("this build has no POST /predict/video route")
    clip = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    face = cv2.cvtColor(astronaut_frame(320, 240), cv2.COLOR_RGB2BGR)
    for _ in range(300):  # 30 s, analysed every 0.1 s: seconds of streaming
        writer.write(face)
    writer.release()

    page.set_input_files("#video-file", str(clip))
    page.fill("#video-every", "0.1")
    page.click("#video-form button[type=submit]")
    page.wait_for_function("document.getElementById('video-status').textContent.startsWith('Analysed up to')")
    status, cancel_disabled = page.evaluate("""async () => {
        document.querySelector('#video-form button[type=submit]').click();
        await new Promise((resolve) => setTimeout(resolve, 100));
        return [document.getElementById('video-status').textContent,
                document.getElementById('video-cancel').disabled];
    }""")
    assert status != "Cancelled." and not cancel_disabled, (status, cancel_disabled)
    page.click("#video-cancel")
    page.wait_for_function("document.getElementById('video-status').textContent === 'Cancelled.'")
    assert page.is_disabled("#video-cancel") and page.is_disabled("#video-report")


def test_video_slower_than_every_is_timed_by_the_servers_interval(page, live_server, tmp_path: Path) -> None:
    """A 2 fps clip analysed "every 0.1 s": the server analyses each of its frames and answers every = 0.5; the page's
    summary counts the 2 s the four frames stand for, not 0.4 s."""
    if "/predict/video" not in live_server.app.openapi()["paths"]:
        pytest.skip("this build has no POST /predict/video route")
    clip = tmp_path / "slow.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 2, (320, 240))
    for _ in range(4):
        writer.write(cv2.cvtColor(astronaut_frame(320, 240), cv2.COLOR_RGB2BGR))
    writer.release()

    page.set_input_files("#video-file", str(clip))
    page.fill("#video-every", "0.1")
    page.click("#video-form button[type=submit]")
    page.wait_for_function("document.getElementById('video-status').textContent.startsWith('Done')", timeout=30_000)
    assert int(page.get_attribute("#video-chart", "data-points")) == 4
    assert " most: 100% of 2 s analysed (no face: 0%)." in page.inner_text("#video-summary")


def legend_colours(page, legend: str) -> dict[str, tuple[int, int, int]]:
    """Category -> RGB of its swatch, in legend order."""
    items = page.evaluate(
        f"""[...document.querySelectorAll('{legend} li')].map(li =>
            [li.textContent, getComputedStyle(li.querySelector('.swatch')).backgroundColor])"""
    )
    return {name: css_rgb(rgb) for name, rgb in items}


def css_rgb(value: str) -> tuple[int, int, int]:
    """'rgb(1, 2, 3)' -> (1, 2, 3)."""
    r, g, b = (int(v) for v in value[value.index("(") + 1 : -1].split(",")[:3])
    return r, g, b


def canvas_pixels(page, selector: str, x: int = 0, width: int | None = None) -> np.ndarray:
    """A canvas's backing store (or the columns from x, width wide) as an RGB array."""
    height, rgba = page.evaluate(
        """([selector, x, width]) => { const c = document.querySelector(selector);
            const data = c.getContext('2d').getImageData(x, 0, width ?? c.width, c.height).data;
            return [c.height, Array.from(data)]; }""",
        [selector, x, width],
    )
    return np.array(rgba, np.uint8).reshape(height, -1, 4)[..., :3]


def canvas_colour_pixels(page, selector: str, rgb: tuple[int, int, int]) -> int:
    """How many pixels of a canvas are exactly `rgb` (counted in the page: a canvas is too big to ship whole)."""
    return page.evaluate(
        """([selector, [r, g, b]]) => { const c = document.querySelector(selector);
            const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < p.length; i += 4) n += p[i] === r && p[i + 1] === g && p[i + 2] === b;
            return n; }""",
        [selector, list(rgb)],
    )


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(image == np.array(rgb, np.uint8), axis=-1).sum())


def csv_shares(csv: str, person: str | None = None) -> dict[int, Counter]:
    """Second -> Counter of face 1's expression (or "no face") over that second's frames, from the page's CSV; with
    `person`, of that person's expression (or "no face" for the frames they are not in)."""
    header = csv.splitlines()[0].split(",")
    frames: dict[tuple[str, str, str], str] = {}  # (time_s, timestamp, frame_id) -> category, in CSV order
    for line in csv.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=True))
        key = (row["time_s"], row["timestamp"], row["frame_id"])
        frames.setdefault(key, NO_FACE)
        if row["face_index"] != "" and (row["face_index"] == "0" if person is None else row["person"] == person):
            frames[key] = row["emotion"]
    seconds: dict[int, Counter] = defaultdict(Counter)
    for (time_s, _, _), category in frames.items():
        seconds[int(float(time_s))][category] += 1
    return seconds


def check_timeline_and_summary(
    page, chart: str, bars: str, buckets: dict[int, Counter], colours: dict[str, tuple[int, int, int]]
) -> dict[str, float]:
    """Each bucket's bar, read from the chart's pixels, splits as `buckets` says (to a pixel of rounding), the
    summary's bars show the average of the buckets' shares, in the legend's colours. Returns the summary."""
    plot = json.loads(page.get_attribute(chart, "data-plot"))
    dpr = page.evaluate("window.devicePixelRatio")
    span = plot["t1"] - plot["t0"]
    top, height = round(plot["top"] * dpr), round(plot["height"] * dpr)
    expected: Counter = Counter()
    for second, counts in buckets.items():
        frames = sum(counts.values())
        x = plot["left"] + (second + 0.5 - plot["t0"]) / span * plot["width"]
        column = canvas_pixels(page, chart, round(x * dpr), 1)[top : top + height + 1, 0]
        for category, rgb in colours.items():
            share = counts[category] / frames
            expected[category] += share / len(buckets)
            drawn = colour_pixels(column, rgb) / height
            assert drawn == pytest.approx(share, abs=2.5 / height), (second, category, drawn, share)
    rows = page.evaluate(
        f"[...document.querySelectorAll('{bars} .bar')].map(b => [b.dataset.category, b.dataset.share])"
    )
    shown = {category: float(share) for category, share in rows}
    assert list(shown) == list(colours)
    for category in colours:
        assert shown[category] == pytest.approx(expected[category], abs=1e-9), category
    fills = page.evaluate(
        f"[...document.querySelectorAll('{bars} .bar-fill')].map(f => getComputedStyle(f).backgroundColor)"
    )
    assert [css_rgb(f) for f in fills] == list(colours.values())
    return shown


def check_overlay_alignment(page, colour: tuple[int, int, int]) -> None:
    """The box drawn on the overlay lies on the face as displayed: computed here from the frame's box, the video
    element's CSS box and the (mirrored) preview, independently of overlay.js; its edges are in `colour`."""
    # The frame's boxes and the overlay's pixels are taken in one go: live frames keep coming, and a tracked face's
    # box moves by a pixel or two between full and windowed detections.
    frame = json.loads(
        page.evaluate("""() => {
        const c = document.getElementById('overlay');
        window.overlaySnapshot = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return c.dataset.frame;
    }""")
    )
    layout = page.evaluate("""() => {
        const v = document.getElementById('video');
        return {w: v.clientWidth, h: v.clientHeight, vw: v.videoWidth, vh: v.videoHeight,
                mirrored: v.classList.contains('mirrored'), dpr: window.devicePixelRatio};
    }""")
    assert (layout["vw"], layout["vh"]) == (640, 480)
    assert layout["mirrored"]  # the default
    # object-fit: contain in a 4:3 stage: uniform scale, centred.
    scale = min(layout["w"] / layout["vw"], layout["h"] / layout["vh"])
    ox = (layout["w"] - layout["vw"] * scale) / 2
    oy = (layout["h"] - layout["vh"] * scale) / 2
    box = frame["boxes"][0]
    s = layout["vw"] * scale / frame["width"]
    x, y, w, h = ox + box["x"] * s, oy + box["y"] * s, box["w"] * s, box["h"] * s
    x = layout["w"] - x - w  # mirrored preview

    def pixels(px: float, py: float) -> np.ndarray:
        """The snapshot's 3x3 RGBA pixels around a point given in CSS pixels."""
        rgba = page.evaluate(
            """([x, y]) => {
            const snap = window.overlaySnapshot;
            const d = window.devicePixelRatio || 1;
            const out = [];
            for (let j = -1; j <= 1; j++) {
                for (let i = -1; i <= 1; i++) {
                    const px = Math.round(x * d) + i, py = Math.round(y * d) + j;
                    const k = 4 * (py * snap.width + px);
                    const inside = px >= 0 && py >= 0 && px < snap.width && py < snap.height;
                    out.push(...(inside ? snap.data.slice(k, k + 4) : [0, 0, 0, 0]));
                }
            }
            return out;
        }""",
            [px, py],
        )
        return np.array(rgba, np.int32).reshape(-1, 4)

    def alpha(px: float, py: float) -> int:
        return int(pixels(px, py)[:, 3].max())

    for px, py in [(x, y + h / 2), (x + w, y + h / 2), (x + w / 2, y + h), (x + w / 2, y)]:
        assert alpha(px, py) > 0, f"no box edge drawn at ({px:.0f}, {py:.0f}) of the overlay"
        opaque = pixels(px, py)
        opaque = opaque[opaque[:, 3] == 255, :3]
        assert (np.abs(opaque - np.array(colour)).max(axis=1) <= 2).any(), f"box edge not in {colour}: {opaque}"
    assert alpha(x + w / 2, y + h / 2) == 0, "the face centre should be left clear"
    # Where the box would be without mirroring there is no edge (the face is off-centre in the photo).
    unmirrored_left = layout["w"] - (x + w)
    if abs(unmirrored_left - x) > 10 and abs(unmirrored_left - (x + w)) > 10:
        assert alpha(unmirrored_left, y + h * 0.75) == 0


def download_csv(page) -> str:
    with page.expect_download() as info:
        page.click("#csv-download")
    assert info.value.suggested_filename.endswith(".csv")
    return Path(info.value.path()).read_text()


def download_png(page, button: str) -> np.ndarray:
    """Clicks a "Save report" button; the download must be a PNG that decodes. Returns it as RGB."""
    with page.expect_download() as info:
        page.click(button)
    assert info.value.suggested_filename.endswith(".png")
    data = Path(info.value.path()).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the report does not decode"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_busy_server_is_shown_and_the_page_reconnects(browser, model_path) -> None:
    from websockets.sync.client import connect

    from server.app import create_app

    with (
        LiveServer(create_app(make_settings(model_path, "haar", ws_max_connections=1))) as server,
        open_page(browser, server.url) as page,
    ):
        with connect(server.url.replace("http://", "ws://") + "/ws"):  # takes the only place
            page.click("#camera-toggle")
            page.wait_for_function(
                "document.getElementById('live-status').textContent.includes('busy')", timeout=10_000
            )
            assert "error" in page.get_attribute("#live-status", "class")
            assert page.get_attribute("#current-labels", "data-labels") == ""
        # The place is free again: the page retries by itself and gets results.
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        page.click("#camera-toggle")


def test_camera_denied_is_explained(playwright, live_server, tmp_path: Path) -> None:
    # No --use-fake-ui-for-media-stream and no permission granted: getUserMedia is refused.
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--use-fake-device-for-media-stream"]
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=args
    )
    try:
        with open_page(context, live_server.url) as page:
            page.click("#camera-toggle")
            page.wait_for_function("document.getElementById('live-status').classList.contains('error')", timeout=10_000)
            assert "denied" in page.inner_text("#live-status")
            assert page.inner_text("#camera-toggle") == "Start camera"
            assert page.is_enabled("#camera-toggle")
    finally:
        context.close()


def test_page_with_an_api_key(browser, model_path, tmp_path: Path) -> None:
    from server.app import create_app

    key = "page-key-0123456789"
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    with (
        LiveServer(create_app(make_settings(model_path, "haar", api_key=key))) as server,
        open_page(browser, server.url) as page,
    ):
        page.evaluate("localStorage.removeItem('emotion-api-key')")
        # Without the key the live stream is refused, and the page says so instead of retrying.
        page.click("#camera-toggle")
        page.wait_for_function("document.getElementById('live-status').textContent.includes('refused')", timeout=10_000)
        assert "API key" in page.inner_text("#live-status")
        assert page.inner_text("#camera-toggle") == "Start camera"
        # With the key saved (localStorage), uploads and the live stream work.
        page.fill("#api-key", key)
        page.click("#access-form button[type=submit]")
        assert "stored" in page.inner_text("#access-status")
        assert page.evaluate("localStorage.getItem('emotion-api-key')") == key
        page.set_input_files("#image-file", str(photo))
        page.click("#image-form button[type=submit]")
        page.wait_for_function("document.getElementById('image-status').textContent.includes('found')", timeout=15_000)
        page.click("#camera-toggle")
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        page.click("#camera-toggle")
        page.evaluate("localStorage.removeItem('emotion-api-key')")


def test_page_with_trusted_hosts_and_another_allowed_origin(browser, model_path, live_server) -> None:
    """The page keeps working behind trusted hosts and an allowed-origins list (its own origin stays allowed), and a
    page from an allowed origin may call the API across origins (CORS, in a real browser)."""
    from server.app import create_app

    settings = make_settings(model_path, "haar", trusted_hosts="127.0.0.1", allowed_origins=live_server.url)
    with LiveServer(create_app(settings)) as server:
        with open_page(browser, server.url) as page:
            page.click("#camera-toggle")
            page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
            page.click("#camera-toggle")
        with open_page(browser, live_server.url) as other:  # a page of another origin
            answer = other.evaluate(
                """async (url) => {
                    const canvas = document.createElement('canvas');
                    canvas.width = canvas.height = 64;
                    const image = await new Promise((done) => canvas.toBlob(done, 'image/jpeg'));
                    const r = await fetch(url + '/predict', {method: 'POST', body: image,
                                                             headers: {'Content-Type': 'image/jpeg'}});
                    return {status: r.status, body: await r.json()};
                }""",
                server.url,
            )
            assert answer["status"] == 200 and answer["body"]["width"] == 64 and answer["body"]["faces"] == []


FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@contextmanager
def model_answers_rewritten(context, rewrite) -> Iterator[list[str]]:
    """GET /model answers reach the pages of ``context`` as the real server gives them, passed through ``rewrite``
    (which edits the JSON body in place); yields the list of the reads, one URL each."""
    fetched: list[str] = []

    def handle(route) -> None:
        response = route.fetch()
        body = response.json()
        rewrite(body)
        fetched.append(route.request.url)
        route.fulfill(response=response, json=body)

    def is_model(url: str) -> bool:
        return urlsplit(url).path == "/model"

    context.route(is_model, handle)
    try:
        yield fetched
    finally:
        context.unroute(is_model)


def record_texts(page, element_id: str) -> None:
    """From now on, every text the element takes is kept, in order (``recorded_texts``)."""
    page.evaluate(
        """(id) => { const element = document.getElementById(id); (window.texts ??= {})[id] = [];
            new MutationObserver(() => window.texts[id].push(element.textContent))
                .observe(element, {childList: true, characterData: true, subtree: true}); }""",
        element_id,
    )


def recorded_texts(page, element_id: str) -> list[str]:
    return page.evaluate("(id) => window.texts[id]", element_id)


@pytest.mark.parametrize("labels", [None, []], ids=["without-labels", "empty-labels"])
def test_page_takes_the_labels_from_the_results_when_get_model_names_none(browser, live_server, labels) -> None:
    """A GET /model answer without labels (this server always sends them; another, or a proxy, may not): the page
    counts by the labels the results carry, names them in its header, keeps them when the stream reconnects, and
    reads GET /model only when it opens and after each reconnect. The header named no labels at all, and each
    reconnect dropped the results' labels until the next result."""
    model_labels = httpx.get(f"{live_server.url}/model").json()["labels"]

    def without_labels(body: dict) -> None:
        if labels is None:
            del body["labels"]
        else:
            body["labels"] = labels

    with model_answers_rewritten(browser, without_labels) as fetched, open_page(browser, live_server.url) as page:
        assert "emotions" not in page.inner_text("#model-info")
        assert list(legend_colours(page, "#timeline-legend")) == [NO_FACE]
        page.click("#camera-toggle")
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        named = f"{len(model_labels)} emotions ({', '.join(model_labels)})"
        assert named in page.inner_text("#model-info")
        page.wait_for_timeout(3000)  # results for longer than the page waits between two reads of GET /model
        assert len(fetched) == 1, fetched
        record_texts(page, "model-info")  # the header is a live region: every text it takes is read out
        page.click("#camera-toggle")
        page.click("#camera-toggle")  # a new connection: GET /model again, which still names no labels
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        page.wait_for_timeout(1000)
        assert len(fetched) == 2, fetched
        headers = recorded_texts(page, "model-info")
        assert all(named in header for header in headers), headers
        assert list(legend_colours(page, "#timeline-legend")) == [*model_labels, NO_FACE]
        assert "another model" not in page.inner_text("#live-status")
        page.click("#camera-toggle")


def emotions(labels: list[str]) -> str:
    """How the page's header names a list of labels."""
    return f"{len(labels)} emotions ({', '.join(labels)})"


def test_page_keeps_the_results_labels_when_get_model_names_others(browser, live_server) -> None:
    """Behind a load balancer GET /model may come from another server than the stream's, with another model. The page
    counts by the labels its results carry and reads GET /model once for them. It used to take GET /model's labels
    over the results' on that read, so its legend went back to them, and on a stream slower than one result per 2 s
    it read GET /model and flipped its legend with every result. Its header paired the other model's version with
    the results' labels; it now names the results' labels and says GET /model describes another model."""
    model_labels = httpx.get(f"{live_server.url}/model").json()["labels"]
    other = FER2013_LABELS if sorted(model_labels) != sorted(FER2013_LABELS) else FERPLUS_LABELS

    def other_model(body: dict) -> None:
        body["labels"] = other
        body["metadata"] |= {"label_source": "other-source", "version": "9.9-other"}

    with model_answers_rewritten(browser, other_model) as fetched, open_page(browser, live_server.url) as page:
        record_texts(page, "timeline-legend")
        record_texts(page, "model-info")
        page.wait_for_timeout(2500)  # past the page's wait between two reads of GET /model
        page.click("#camera-toggle")
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        page.wait_for_timeout(3000)
        assert len(fetched) == 2, fetched  # on opening, and once for the results' labels
        legend = list(legend_colours(page, "#timeline-legend"))
        assert legend[: len(model_labels)] == model_labels, legend  # the results' labels lead
        legends = recorded_texts(page, "timeline-legend")
        states = [text for i, text in enumerate(legends) if i == 0 or text != legends[i - 1]]
        assert len(states) == 1, states  # the legend changed to the results' labels once, never back
        header = page.inner_text("#model-info")
        assert header == (
            f"Model: {emotions(model_labels)} · version unknown: GET /model describes another model "
            f"(other-source, {len(other)} emotions, version 9.9-other)"
        ), header
        # Before the first result the header described GET /model's answer alone; never its version with the
        # results' labels, nor its detector (another server's) beside them.
        for text in recorded_texts(page, "model-info"):
            assert (emotions(model_labels) in text) == ("describes another model" in text), text
            assert ("face detector" in text) == (emotions(other) in text), text
        page.click("#camera-toggle")


def test_page_reads_get_model_again_for_labels_seen_soon_after_a_read(browser, make_model) -> None:
    """A rolling update behind a load balancer: the server of the page's stream restarts with a model of other labels,
    and the page's GET /model on reconnecting is answered by a server still running the old one. The new labels come
    in the results within 2 s of that read: the page read GET /model no more until the next reconnect, so its header
    paired the old model's version with the new labels. Now it reads again once the throttle allows, and stops
    reading when the answer names the results' labels."""
    from server.app import create_app

    old_meta, new_meta = (
        {"label_source": "fer2013", "version": "before"},
        {"label_source": "ferplus", "version": "after"},
    )
    before = make_model("before.onnx", labels=FER2013_LABELS, favour="sad", metadata=old_meta)
    after = make_model("after.onnx", labels=FERPLUS_LABELS, favour="contempt", metadata=new_meta)
    old_answer: dict = {}  # the first answer, the old model's, as a server still running it gives it
    stale_answers = 0

    def an_old_server_answers_once(body: dict) -> None:
        nonlocal stale_answers
        if not old_answer:
            old_answer.update(copy.deepcopy(body))
        elif body["metadata"]["version"] == "after" and not stale_answers:
            stale_answers += 1
            body.clear()
            body.update(old_answer)

    with LiveServer(create_app(make_settings(before, "haar"))) as server:
        port = server.port
        with (
            model_answers_rewritten(browser, an_old_server_answers_once) as fetched,
            open_page(browser, server.url) as page,
        ):
            page.click("#camera-toggle")
            page.wait_for_function("document.getElementById('current-labels').dataset.labels === 'sad'", timeout=15_000)
            record_texts(page, "model-info")
            server.__exit__(None, None, None)
            with LiveServer(create_app(make_settings(after, "haar")), port=port):
                page.wait_for_function(
                    "document.getElementById('current-labels').dataset.labels === 'contempt'", timeout=20_000
                )
                page.wait_for_function(
                    "document.getElementById('model-info').textContent.includes('version after')", timeout=6_000
                )
                page.wait_for_timeout(3000)  # results that agree with GET /model: no more reads
                page.click("#camera-toggle")
            headers = recorded_texts(page, "model-info")
    assert stale_answers == 1, "the page did not read GET /model on reconnecting"
    assert len(fetched) == 3, fetched  # on opening, on reconnecting (the old server's answer), once for the labels
    assert headers[-1] == f"Model: ferplus · {emotions(FERPLUS_LABELS)} · version after · face detector: haar"
    for text in headers:  # a version beside labels only when both are one model's
        parts = text.removeprefix("Model: ").split(" · ")
        assert "version before" not in parts or emotions(FER2013_LABELS) in parts, text
        assert "version after" not in parts or emotions(FERPLUS_LABELS) in parts, text


@pytest.mark.parametrize(
    ("before", "after", "legend"),
    [
        # 7 labels -> 8: the new model's labels, contempt among them, from then on.
        pytest.param(
            ("fer2013", FER2013_LABELS, "sad"),
            ("ferplus", FERPLUS_LABELS, "contempt"),
            FERPLUS_LABELS,
            id="fer2013-to-ferplus",
        ),
        # 8 labels -> 7: the new model's, and contempt kept at the end for the frames counted under it.
        pytest.param(
            ("ferplus", FERPLUS_LABELS, "contempt"),
            ("fer2013", FER2013_LABELS, "sad"),
            [*FER2013_LABELS, "contempt"],
            id="ferplus-to-fer2013",
        ),
    ],
)
def test_page_follows_a_server_restarted_with_another_model(browser, make_model, before, after, legend) -> None:
    """The server behind an open page restarts with a model of other labels: the page says which model it now
    talks to, counts the new labels, and its timeline, summary and CSV still agree over the whole session."""
    from server.app import create_app

    def model(name: str, source: str, labels: list[str], favour: str) -> Path:
        meta = {"label_source": source, "version": name}
        return make_model(f"{name}.onnx", labels=labels, favour=favour, metadata=meta)

    first = model("before", *before)
    second = model("after", *after)
    with LiveServer(create_app(make_settings(first, "haar"))) as server:
        port, url = server.port, server.url
        with open_page(browser, url) as page:
            assert "version before" in page.inner_text("#model-info")
            page.click("#camera-toggle")
            page.wait_for_function(
                f"document.getElementById('current-labels').dataset.labels === '{before[2]}'", timeout=15_000
            )
            page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2", timeout=15_000)
            server.__exit__(None, None, None)
            with LiveServer(create_app(make_settings(second, "haar")), port=port):
                # The page reconnects by itself and labels the face with the new model's label.
                page.wait_for_function(
                    f"document.getElementById('current-labels').dataset.labels === '{after[2]}'", timeout=20_000
                )
                page.wait_for_function(
                    "document.getElementById('model-info').textContent.includes('version after')", timeout=10_000
                )
                info = page.inner_text("#model-info")
                assert f"{after[0]} · {len(after[1])} emotions" in info, info
                assert "another model" in page.inner_text("#live-status")
                page.wait_for_timeout(1500)  # a few more seconds of the new model on the timeline
                page.click("#camera-toggle")

            colours = legend_colours(page, "#timeline-legend")
            assert list(colours) == [*legend, NO_FACE]
            csv = download_csv(page)
            header = csv.splitlines()[0].split(",")
            assert header[-len(legend) :] == [f"p_{label}" for label in legend]
            emotions = Counter(line.split(",")[6] for line in csv.splitlines()[1:])
            assert emotions[before[2]] >= 2 and emotions[after[2]] >= 2, emotions
            # Every second, before and after the switch, drawn as the CSV counts it; the summary is their average.
            summary = check_timeline_and_summary(page, "#timeline", "#summary-bars", csv_shares(csv), colours)
            assert summary[before[2]] > 0 and summary[after[2]] > 0, summary
            # A new session counts by the new model's labels alone: its legend and its summary bars say so.
            page.click("#session-reset")
            assert list(legend_colours(page, "#timeline-legend")) == [*after[1], NO_FACE]
            bars = page.evaluate("[...document.querySelectorAll('#summary-bars .bar')].map(b => b.dataset.category)")
            assert bars == [*after[1], NO_FACE]

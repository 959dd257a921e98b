"""The app in a real headless Chromium (Debian's ``chromium`` package, driven by Playwright through
``executable_path``): upload a portrait, type an instruction, pick methods, press Edit, see one tile per selected
method. Saves a screenshot (also copied to /tmp/app_screenshot.png for a look)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from instantportrait.app import TINY_LABEL, AppSettings
from instantportrait.demo.examples import astronaut_portrait

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = Path("/tmp/app_screenshot.png")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_face_pack, tiny_clip_file):
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    import app as app_module

    work = tmp_path_factory.mktemp("browser_app")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = AppSettings(sources=("tiny",), face_pack=str(tiny_face_pack), clip=str(tiny_clip_file),
                           resolution=64, max_side=512, work_dir=work, demo_root=work / "no-demo-models", port=port,
                           device="cpu", dtype="float32")
    demo, _, url = app_module.serve(settings)
    yield url
    demo.close()


def test_upload_instruct_edit_and_see_one_tile_per_method(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    portrait = tmp_path / "portrait.png"
    astronaut_portrait().save(portrait)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.goto(app_url, wait_until="domcontentloaded", timeout=30_000)
            expect(page.locator("#edit-button")).to_be_visible(timeout=30_000)
            expect(page.get_by_text(TINY_LABEL).first).to_be_visible()  # the banner says what these models are

            page.locator("#input-image input[type=file]").set_input_files(str(portrait))
            expect(page.locator("#input-image img").first).to_be_visible(timeout=15_000)
            page.locator("#instruction textarea").fill("90s gamer yearbook photo, with headset, blue drape background")
            methods = page.locator("#methods")
            for label in ("IPNet (1 step)", "InstructPix2Pix"):  # selected by default
                expect(methods.get_by_label(label, exact=False).first).to_be_checked()
            methods.get_by_label("InstructPix2Pix", exact=False).first.uncheck()
            methods.get_by_label("IDE-Net (teacher)", exact=False).first.check()
            methods.get_by_label("IPNet (2 steps)", exact=False).first.check()
            # A method with no model here (InstantID has no tiny stand-in) gets a tile that says why.
            unavailable = methods.get_by_label("InstantID — not available here", exact=False)
            with_failing = unavailable.count() > 0
            if with_failing:
                unavailable.first.check()
            page.locator("#edit-button").click()

            for method in ("ipnet", "ipnet-2step", "idenet"):
                expect(page.locator(f"#tile-{method} img").first).to_be_visible(timeout=60_000)
                expect(page.locator(f"#caption-{method}")).to_contain_text("network evaluation", timeout=10_000)
            expect(page.locator("#caption-idenet")).to_contain_text("60 network evaluations")  # 20 steps x 3
            if with_failing:
                expect(page.locator("#caption-instantid")).to_contain_text("Cannot run here", timeout=10_000)
            expect(page.locator(".method-tile:visible")).to_have_count(4 if with_failing else 3)
            expect(page.locator("#tile-instructpix2pix")).to_be_hidden()
            expect(page.locator("#status")).to_contain_text("3 of 4" if with_failing else "3 of 3")
            expect(page.locator("#numbers")).to_contain_text("IDE-Net (teacher)")
            expect(page.locator("#before-after")).to_be_visible()

            shot = tmp_path / "app_screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            shutil.copyfile(shot, SCREENSHOT_COPY)
        finally:
            browser.close()

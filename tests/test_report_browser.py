"""report.html as a browser shows it: every image decodes and takes up room on the page (headless Chromium)."""

import shutil

import pytest

from test_report import IMAGES

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium not found: install the Debian packages chromium and chromium-driver "
                    "(.ci/run does) to check report.html in a browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_every_report_image_renders(small_run, browser):
    browser.get((small_run / "report.html").resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(img => {"
        "  const box = img.getBoundingClientRect();"
        "  return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,"
        "          naturalHeight: img.naturalHeight, width: box.width, height: box.height};"
        "});"
    )
    assert len(images) == IMAGES  # every image report.html embeds (test_report.IMAGES)
    for image in images:
        assert image["complete"], image["alt"]
        assert image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image["alt"]
        assert image["width"] > 0 and image["height"] > 0, image["alt"]


#: Issue 32: the demo's page was ~8,700 px tall, most of it forest-plot margins.
MAX_PAGE_HEIGHT = 5000


def test_the_page_is_compact_at_1280_px_and_says_what_next(small_run, browser):
    import json

    browser.set_window_size(1280, 900)
    browser.get((small_run / "report.html").resolve().as_uri())
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.execute_script("return window.innerWidth")
    assert width <= 1280 and height < MAX_PAGE_HEIGHT, height
    section = browser.execute_script(
        "const h = Array.from(document.querySelectorAll('h2')).find(h => h.textContent === 'What next');"
        "const list = h && h.nextElementSibling;"
        "return list ? Array.from(list.querySelectorAll('li')).map(li => li.textContent) : null;")
    advice = json.loads((small_run / "report.json").read_text())["what_next"]
    assert section == [item["text"] for item in advice]
    # The smoke run fits 4 SVI steps: too few, every channel straddles; the last item always says how to deploy.
    assert {"svi", "straddling", "deployment"} <= {item["kind"] for item in advice}
    assert advice[-1]["kind"] == "deployment" and "load_pruned(" in section[-1]
    # The forest plots sit side by side: no figure is wider than half the page.
    widths = browser.execute_script(
        "return Array.from(document.images).filter(i => i.alt.startsWith('forest plot'))"
        ".map(i => i.getBoundingClientRect().width)")
    assert widths and max(widths) <= 1280 / 2

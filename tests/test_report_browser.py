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

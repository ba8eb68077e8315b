"""Headless Debian chromium for the report tests: the DOM a real browser builds from a page.

``dump_dom(path, tmp)`` loads a *copy* of the page with a small probe script added (the report
itself has no scripts): after the load event it writes into the DOM each image's decoded size
and whether each figure caption is laid out (has a box), then chromium prints the DOM.
Tests skip when chromium is missing, unless LINGUA_RAY_REQUIRE_BROWSER=1 (CI), which fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

PROBE = """<script>window.addEventListener("load", () => {
  for (const img of document.images) img.dataset.natural = img.naturalWidth + "x" + img.naturalHeight;
  for (const cap of document.querySelectorAll("figcaption"))
    cap.dataset.box = (cap.getBoundingClientRect().height > 0) ? "yes" : "no";
  document.body.dataset.probed = "yes";
});</script>"""


def require_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("LINGUA_RAY_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (LINGUA_RAY_REQUIRE_BROWSER=1) but not on PATH: apt-get install chromium")
        pytest.skip("Debian chromium is not installed")
    return CHROMIUM


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = require_chromium()
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args], check=True,
                          timeout=120, capture_output=True, text=True)


def dump_dom(page: Path, tmp: Path) -> str:
    """The serialised DOM of ``page`` (plus the probe's data attributes) after chromium loaded it."""
    probed = tmp / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    assert "</body>" in text
    probed.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    out = _run(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp).stdout
    assert 'data-probed="yes"' in out, "the probe did not run: chromium gave no loaded DOM"
    return out


def screenshot(page: Path, png: Path, tmp: Path, size: str = "1200,2000") -> bytes:
    _run([f"--window-size={size}", f"--screenshot={png}", page.as_uri()], tmp)
    return png.read_bytes()

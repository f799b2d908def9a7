"""Headless Chromium for the page tests (the curate report, the demo page): skips without it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                             "`make test` tries)")

IMGCHECK = """<!doctype html><html><body><script>
const x = new XMLHttpRequest(); x.open("GET", "index.html", false); x.send();
const doc = new DOMParser().parseFromString(x.responseText, "text/html");
const srcs = [...doc.querySelectorAll("img")].map(i => i.getAttribute("src"));
const res = []; let done = 0;
function fin() { if (++done === srcs.length) document.body.setAttribute("data-loaded", res.join(" ")); }
srcs.forEach(s => { const im = new Image(); im.onload = () => { res.push(s + "=" + im.naturalWidth); fin(); };
  im.onerror = () => { res.push(s + "=ERR"); fin(); }; im.src = s; });
</script></body></html>"""


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def loaded_images(index: Path, tmp_path) -> dict[str, str]:
    """{src: the natural width Chromium decoded, or "ERR"} for every <img> of the page at `index`."""
    check = index.parent / "_imgcheck.html"
    check.write_text(IMGCHECK)
    dom = chromium(tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                   check.as_uri()).stdout
    check.unlink()
    return dict(item.split("=") for item in re.search(r'data-loaded="([^"]*)"', dom).group(1).split())

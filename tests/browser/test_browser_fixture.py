"""The browser fixture itself: it launches, it records console errors, the canvas check tells."""

from __future__ import annotations

import pytest

from tests.browser.pagecheck import block_network, canvas_colours, canvas_ink

PAGE = """<!doctype html><html><body>
<canvas id="drawn" width="100" height="50"></canvas><canvas id="blank" width="100" height="50"></canvas>
<script>
const g = document.getElementById('drawn').getContext('2d');
g.fillStyle = '#ffffff'; g.fillRect(0, 0, 100, 50);
g.strokeStyle = '#1f77b4'; g.lineWidth = 3; g.beginPath(); g.moveTo(0, 40); g.lineTo(100, 5); g.stroke();
</script></body></html>"""


def test_canvas_check_tells_drawn_from_blank(browser_page, tmp_path) -> None:
    f = tmp_path / "p.html"
    f.write_text(PAGE)
    browser_page.page.goto(f.as_uri())
    drawn, blank = canvas_colours(browser_page.page, "canvas")
    assert drawn >= 2 and blank == 0
    ink_drawn, ink_blank = canvas_ink(browser_page.page, "canvas")
    assert ink_drawn > 100 and ink_blank == 0
    browser_page.assert_no_console_errors()


def test_console_errors_and_network_are_caught(browser_page, tmp_path) -> None:
    f = tmp_path / "p.html"
    f.write_text('<script>console.error("boom"); fetch("http://192.0.2.1/x").catch(() => {});</script>')
    blocked = block_network(browser_page.page)
    browser_page.page.goto(f.as_uri())
    browser_page.page.wait_for_timeout(200)
    assert any("boom" in e for e in browser_page.console_errors)
    assert blocked == ["http://192.0.2.1/x"]
    with pytest.raises(AssertionError):
        browser_page.assert_no_console_errors()

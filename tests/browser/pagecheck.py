"""What browser tests check on a page: a canvas that really drew, a page that uses no network.

Shared by the loadgen and proxy dashboard tests (import as ``from tests.browser.pagecheck import ...``).
"""

from __future__ import annotations

from typing import Any

#: Counts the distinct colours of a canvas' pixels (sampled on a grid), in the page. A blank canvas
#: has one (transparent or the background); axes alone a handful; a drawn series adds its own.
_CANVAS_COLOURS_JS = """
(el) => {
  const c = el.tagName === 'CANVAS' ? el : el.querySelector('canvas');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  const step = Math.max(1, Math.floor(Math.sqrt(c.width * c.height / 40000)));
  for (let y = 0; y < c.height; y += step)
    for (let x = 0; x < c.width; x += step) {
      const i = (y * c.width + x) * 4;
      if (d[i + 3] === 0) continue;
      seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
  return seen.size;
}
"""


#: Counts the "chromatic" pixels of a canvas: clearly coloured, not a shade of grey. Axes, grid
#: lines and axis text are grey (r = g = b), so this counts what a chart's series drew.
_CANVAS_INK_JS = """
(el) => {
  const c = el.tagName === 'CANVAS' ? el : el.querySelector('canvas');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] < 128) continue;
    const r = d[i], g = d[i + 1], b = d[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) n += 1;
  }
  return n;
}
"""


def canvas_ink(page: Any, selector: str) -> list[int]:
    """Coloured (non-grey) pixels in each canvas under ``selector``: 0 for a chart with no series
    drawn, however many axes and labels it has. A line across a chart gives hundreds."""
    return [h.evaluate(_CANVAS_INK_JS) for h in page.query_selector_all(selector)]


def canvas_colours(page: Any, selector: str) -> list[int]:
    """Distinct opaque colours in each canvas under ``selector`` (0: nothing drawn at all)."""
    return [h.evaluate(_CANVAS_COLOURS_JS) for h in page.query_selector_all(selector)]


def block_network(page: Any) -> list[str]:
    """Abort every request that is not ``file://`` or ``data:``; returns the list of blocked URLs.

    A report meant to open offline must not even try: the test asserts the list stays empty.
    """
    blocked: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file://", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.context.route("**/*", handle)
    return blocked

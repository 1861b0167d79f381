#!/usr/bin/env bash
# Render a lowrank report in a headless browser and check it.
#
#   scripts/check_report.sh [--no-install] REPORT.html [SCREENSHOT.png] [WIDTH,HEIGHT]
#
# Installs Debian's chromium with apt-get when it is missing (unless --no-install),
# takes a full-page screenshot (default: screenshot.png next to the report, window
# 1400,4000), then checks that the page has a results table, that every figure is an
# embedded PNG with alt text, and that the screenshot is not blank. Exit 0 and a line
# starting with "OK" when all holds. Look at the screenshot yourself for the rest
# (labelled axes, readable table).
set -euo pipefail

install=1
if [ "${1:-}" = "--no-install" ]; then install=0; shift; fi
[ $# -ge 1 ] || { echo "usage: $0 [--no-install] REPORT.html [SCREENSHOT.png] [WIDTH,HEIGHT]" >&2; exit 2; }
report=$(realpath "$1")
shot=$(realpath -m "${2:-$(dirname "$report")/screenshot.png}")
size=${3:-1400,4000}
[ -f "$report" ] || { echo "check_report: no such file $report" >&2; exit 2; }

if ! command -v chromium >/dev/null; then
  if [ "$install" = 1 ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "[check_report] apt-get install chromium" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "check_report: chromium is not installed (apt-get install -y chromium)" >&2
    exit 3
  fi
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$shot"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$shot" --window-size="$size" "file://$report" \
  >"$profile/chromium.log" 2>&1 || { cat "$profile/chromium.log" >&2; exit 1; }
[ -s "$shot" ] || { echo "check_report: chromium wrote no screenshot" >&2; cat "$profile/chromium.log" >&2; exit 1; }

"${PYTHON:-python3}" - "$report" "$shot" <<'PY'
import html.parser
import sys

import numpy as np
from matplotlib.image import imread


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.rows, self.scripts = [], 0, 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows += 1
        elif tag == "script":
            self.scripts += 1


report, shot = sys.argv[1], sys.argv[2]
page = Page()
page.feed(open(report, encoding="utf-8").read())
problems = []
if page.tables == 0:
    problems.append("no table")
if page.scripts:
    problems.append(f"{page.scripts} <script> elements (user strings not escaped?)")
for i, img in enumerate(page.imgs):
    if not img.get("src", "").startswith("data:image/png;base64,"):
        problems.append(f"image {i} is not an embedded PNG")
    if not img.get("alt"):
        problems.append(f"image {i} has no alt text")
pixels = imread(shot)[..., :3]
if float(np.std(pixels)) < 0.02:
    problems.append("the screenshot is blank")
if problems:
    print("FAIL: " + "; ".join(problems))
    sys.exit(1)
print(f"OK: {page.tables} tables ({page.rows} rows), {len(page.imgs)} embedded figures with alt text; "
      f"screenshot {pixels.shape[1]}x{pixels.shape[0]} px at {shot}")
PY

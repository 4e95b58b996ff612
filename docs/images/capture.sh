#!/usr/bin/env bash
# Regenerates the README's screenshots (docs/images/top.png and docs/images/status-page.png) from a
# live quick start: `hubroute top` in a 110x30 tmux pane, rendered with its colours by headless
# Chromium, and the status page itself. Needs tmux, chromium and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hubroute-target}"
cargo build --quiet --bin hubroute
bin="$CARGO_TARGET_DIR/debug/hubroute"
work="$(mktemp -d)"
socket="hubroute-capture-$$"
cleanup() {
    tmux -L "$socket" kill-server 2>/dev/null || true
    [[ -n "${quickstart:-}" ]] && kill -INT "$quickstart" 2>/dev/null && wait "$quickstart" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" quickstart --dir "$work/quickstart" --rate 800 2>"$work/quickstart.log" >/dev/null &
quickstart=$!
for _ in $(seq 100); do
    url="$(grep -o 'status page http://[0-9.:]*/' "$work/quickstart.log" | head -1 | cut -d' ' -f3 || true)"
    [[ -n "$url" ]] && break
    sleep 0.2
done
[[ -n "${url:-}" ]] || { cat "$work/quickstart.log"; echo "the quick start printed no status page URL" >&2; exit 1; }
echo "quick start at $url; letting it run 45 s for the charts"
sleep 45

tmux -L "$socket" new-session -d -s top -x 110 -y 30 "$bin top --url ${url%/}"
sleep 4
tmux -L "$socket" capture-pane -e -p -t top >"$work/top.ansi"
python3 - "$work/top.ansi" "$work/top.html" <<'PY'
import html, re, sys
# A dark terminal palette for the 16 ANSI colours.
PALETTE = ["#1d1f21", "#e0585b", "#5fb96d", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#d0d0d0",
           "#6b7280", "#ff7b7e", "#8fd694", "#ffd787", "#8cc8ff", "#e2a6f7", "#8ee3ef", "#ffffff"]
FG, BG = "#d0d0d0", "#1d1f21"
def colour(n):
    if n < 16: return PALETTE[n]
    if n < 232:
        n -= 16; r, g, b = n // 36, (n // 6) % 6, n % 6
        v = lambda c: 0 if c == 0 else 55 + 40 * c
        return "#%02x%02x%02x" % (v(r), v(g), v(b))
    g = 8 + 10 * (n - 232); return "#%02x%02x%02x" % (g, g, g)
out, state = [], {"fg": None, "bg": None, "bold": False, "dim": False, "ul": False}
def span(text):
    if not text: return
    style = []
    fg, bg = state["fg"] or FG, state["bg"]
    if state["dim"]: style.append("opacity:.55")
    if state["bold"]: style.append("font-weight:700")
    if state["ul"]: style.append("text-decoration:underline")
    style.append("color:" + fg)
    if bg: style.append("background:" + bg)
    out.append('<span style="%s">%s</span>' % (";".join(style), html.escape(text)))
text = open(sys.argv[1], encoding="utf-8").read()
for part in re.split(r"(\x1b\[[0-9;]*m)", text):
    if not part.startswith("\x1b["):
        span(part); continue
    codes = [int(c) if c else 0 for c in part[2:-1].split(";")]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0: state.update(fg=None, bg=None, bold=False, dim=False, ul=False)
        elif c == 1: state["bold"] = True
        elif c == 2: state["dim"] = True
        elif c == 4: state["ul"] = True
        elif c == 22: state.update(bold=False, dim=False)
        elif c == 24: state["ul"] = False
        elif 30 <= c <= 37: state["fg"] = PALETTE[c - 30]
        elif 90 <= c <= 97: state["fg"] = PALETTE[c - 90 + 8]
        elif c == 39: state["fg"] = None
        elif 40 <= c <= 47: state["bg"] = PALETTE[c - 40]
        elif 100 <= c <= 107: state["bg"] = PALETTE[c - 100 + 8]
        elif c == 49: state["bg"] = None
        elif c in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
            state["fg" if c == 38 else "bg"] = colour(codes[i + 2]); i += 2
        i += 1
page = ("<!doctype html><meta charset=utf-8><style>body{margin:0;background:%s}"
        "pre{margin:0;padding:14px 16px;font:15px/1.35 'DejaVu Sans Mono',monospace;color:%s}</style>"
        "<pre>%s</pre>" % (BG, FG, "".join(out)))
open(sys.argv[2], "w", encoding="utf-8").write(page)
PY
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars
    --user-data-dir="$work/profile")
"${chrome[@]}" --window-size=1010,640 --screenshot="$PWD/docs/images/top.png" "file://$work/top.html" 2>/dev/null
"${chrome[@]}" --window-size=1400,1150 --virtual-time-budget=4000 \
    --screenshot="$PWD/docs/images/status-page.png" "$url" 2>/dev/null
echo "wrote docs/images/top.png and docs/images/status-page.png"

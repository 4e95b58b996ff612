"""What a user sees in a terminal: runs a command under a pseudo-terminal of a fixed size and renders
everything it writes with pyte, a VT100 emulator, into a screen with scrollback.

Usage: terminal_block.py COLUMNS ROWS TIMEOUT_SECONDS TRANSCRIPT -- COMMAND [ARG...]

The command gets the pseudo-terminal as its controlling terminal and as stdin, stdout and stderr,
sized COLUMNS x ROWS (TIOCSWINSZ) before it starts. The emulator answers the command's cursor
position queries (DSR, `ESC [ 6 n`), as a real terminal does; ratatui's inline viewport asks one.
The raw byte stream is saved to TRANSCRIPT.

Prints {"status": exit code, "history": [lines scrolled off the top], "screen": [ROWS lines],
"cursor": [x, y]} as JSON on stdout, lines without trailing blanks. Fails (exit 1) if the command
runs longer than TIMEOUT_SECONDS, after printing the screen so far on stderr.
"""

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pyte


class Terminal(pyte.HistoryScreen):
    """A screen that answers the program's status reports on the pseudo-terminal."""

    def __init__(self, columns, rows, master):
        super().__init__(columns, rows, history=10000, ratio=0.5)
        self.master = master

    def write_process_input(self, data):
        os.write(self.master, data.encode())


def text(line, columns):
    return "".join(line[x].data for x in range(columns)).rstrip()


def render(screen, columns):
    return {
        "history": [text(line, columns) for line in screen.history.top],
        "screen": [line.rstrip() for line in screen.display],
        "cursor": [screen.cursor.x, screen.cursor.y],
    }


def main():
    columns, rows, timeout, transcript = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    if sys.argv[5] != "--":
        sys.exit(__doc__)
    command = sys.argv[6:]
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    child = subprocess.Popen(
        command,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        # The pseudo-terminal becomes the new session's controlling terminal, as a shell's would be.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    screen = Terminal(columns, rows, master)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    with open(transcript, "wb") as raw:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                child.send_signal(signal.SIGKILL)
                child.wait()
                shown = render(screen, columns)
                print("\n".join(shown["history"] + shown["screen"]), file=sys.stderr)
                sys.exit(f"{command} did not finish within {timeout} s")
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:
                # EIO: every copy of the terminal's other side is closed, so the command is done.
                data = b""
            if not data:
                break
            raw.write(data)
            stream.feed(data)
    status = child.wait()
    os.close(master)
    print(json.dumps({"status": status, **render(screen, columns)}))


if __name__ == "__main__":
    main()

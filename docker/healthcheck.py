"""The image's HEALTHCHECK: is the web demo answering?

One image runs the demo, training, the quickstart and one-off commands, and a single HEALTHCHECK covers them
all.  So the check looks for a running `frtf demo` (or `python -m face_recognition_tf demo`) process and asks
its port for HTTP 200; a container that runs anything else is healthy while it runs, since its main process
ending ends the container.  Standard library only: the image has no curl.

Exit 0 healthy, 1 unhealthy (Docker's HEALTHCHECK convention).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 7860  # frtf demo's default --port
TIMEOUT_S = 4.0


def demo_port(argv: list) -> int | None:
    """The port a command line serves the demo on, or None when it is not `frtf demo`."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "frtf" or (arg == "face_recognition_tf" and i > 0 and argv[i - 1] == "-m"):
            rest = argv[i + 1:]
            break
    else:
        return None
    command = next((a for a in rest if not a.startswith("-")), None)  # global options (--verbose) come first
    if command != "demo":
        return None
    port = DEFAULT_PORT
    for j, arg in enumerate(rest):
        if arg == "--port" and j + 1 < len(rest):
            port = int(rest[j + 1])
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
    return port


def running_demo_ports(proc: str = "/proc") -> list:
    ports = []
    for pid in os.listdir(proc):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:  # the process ended while we looked
            continue
        try:
            port = demo_port(argv)
        except ValueError:  # a --port that is not a number: the demo itself refuses it
            continue
        if port is not None:
            ports.append(port)
    return ports


def http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    ports = running_demo_ports()
    if not ports:
        return 0
    bad = [port for port in ports if not http_ok(port)]
    if bad:
        print(f"frtf demo: no HTTP 200 on port(s) {', '.join(map(str, bad))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

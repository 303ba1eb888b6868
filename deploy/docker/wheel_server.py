"""Serve this host's local pip sources to `docker build --network host`, over loopback, for the time of a build.

pip on the host may be configured with local folders (``find-links = /opt/wheels``, ``extra-index-url =
file:///opt/pypi/simple``). A build cannot read host folders, and copying gigabytes of wheels into the build
context would send them to dockerd on every build. Instead this script serves the folders' common parent on
``http://127.0.0.1:PORT/`` and writes the same settings, rewritten to those URLs, as ``PIP_*`` lines to
``--env-file`` (URLs that are not local stay as they are). The build passes them as build arguments. pip treats
loopback HTTP as secure. The port is fixed by default so that the URLs, and with them the build cache, stay the same
from one build to the next.

    python3 deploy/docker/wheel_server.py --port 38111 --env-file /tmp/pip.env   # serves until killed

Only the standard library: it runs with the host's python3, before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import subprocess
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# pip's option name -> the environment variable pip reads for it. Sources (URLs or folders), then host names.
OPTIONS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "find-links": "PIP_FIND_LINKS",
           "trusted-host": "PIP_TRUSTED_HOST"}
SOURCES = ("index-url", "extra-index-url", "find-links")


def pip_settings(pip: list[str]) -> dict[str, list[str]]:
    """The host's pip sources, from ``pip config list`` (files and PIP_* environment), later scopes winning."""
    found: dict[str, list[str]] = {}
    try:
        listing = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        listing = ""
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if sep and option in OPTIONS:
            found[option] = shlex.split(value)[0].split() if value.strip() else []
    for option, variable in OPTIONS.items():  # the environment wins over files, as in pip
        if os.environ.get(variable):
            found[option] = os.environ[variable].split()
    return found


def local_path(url: str) -> Path | None:
    """The folder a pip source names when it is on this host (a path or a file:// URL), else None."""
    if url.startswith("file:"):
        return Path(unquote(urlsplit(url).path))
    if "://" not in url:
        return Path(url).expanduser().resolve()
    return None


def rewrite(settings: dict[str, list[str]], port: int) -> tuple[Path | None, dict[str, str]]:
    """The folder to serve and the PIP_* values that point into it."""
    sources = {option: urls for option, urls in settings.items() if option in SOURCES}
    folders = [p for urls in sources.values() for url in urls if (p := local_path(url)) is not None and p.exists()]
    root = Path(os.path.commonpath(folders)) if folders else None
    if root is not None and root.is_file():
        root = root.parent
    env: dict[str, str] = {}
    for option, urls in settings.items():
        if option not in SOURCES:
            env[OPTIONS[option]] = " ".join(urls)
            continue
        out = []
        for url in urls:
            path = local_path(url)
            if path is None:
                out.append(url)
            elif root is not None and path.exists():
                out.append(f"http://127.0.0.1:{port}/{path.relative_to(root).as_posix()}".rstrip("/") + "/")
        if out:
            env[OPTIONS[option]] = " ".join(out)
    return root, env


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=38111)
    parser.add_argument("--env-file", type=Path, required=True, help="PIP_*=value lines are written here")
    parser.add_argument("--pip", default="", help="pip command whose configuration is read (default: python3 -m pip, "
                                                  "else the first pip3 or pip on PATH)")
    args = parser.parse_args()

    pip = shlex.split(args.pip) if args.pip else [sys.executable, "-m", "pip"]
    if not args.pip and subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        pip = ["pip3"]
    settings = pip_settings(pip)
    root, env = rewrite(settings, args.port)
    server = None
    if root is not None:
        handler = functools.partial(QuietHandler, directory=str(root))
        try:
            server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
        except OSError as exc:  # the port is taken: any free one, at the price of the build cache of pip's layers
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            print(f"port {args.port}: {exc.strerror}; serving on {server.server_port} instead (the build cache of "
                  "the layers that install packages will not be reused)", file=sys.stderr)
            root, env = rewrite(settings, server.server_port)
    partial = args.env_file.with_name(args.env_file.name + ".partial")
    partial.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
    partial.replace(args.env_file)  # whole, and only once the server listens
    print(f"serving {root} on http://127.0.0.1:{server.server_port}/" if server else "no local pip sources to serve",
          file=sys.stderr, flush=True)
    if server is None:
        return 0
    with contextlib.suppress(KeyboardInterrupt), server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

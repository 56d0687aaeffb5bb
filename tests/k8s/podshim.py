"""The network of a pod run by the kubelet stand-in, for a Python container process.

Usage (by ``kubelet.py`` only): ``python podshim.py COMMAND ARGS...`` with

* ``STANDIN_PORTS``: JSON ``{"<containerPort>": <hostPort>}``. Every pod shares the
  host's network here, so two pods binding their container port 9100 would collide;
  a ``bind`` to a container port binds its host port instead, on 127.0.0.1 — what a
  container runtime's port mapping does from the outside.
* ``STANDIN_SERVICES``: a JSON file the stand-in keeps current,
  ``{"<service>.<namespace>": {"<port>": <hostPort of a ready endpoint>}}``: a lookup
  of ``<service>.<namespace>.svc[.cluster.local]`` resolves to 127.0.0.1 and that host
  port — the cluster DNS and Service routing of a real node.

``COMMAND`` is the container's command, or the image's entrypoint ``jobpool``: the
shim runs ``jobpool`` as ``python -m jobpool`` and ``python -c CODE`` as such, in this
same process, so the patched socket functions apply to them.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import sys
from typing import Any

LOCALHOST = "127.0.0.1"
SERVICE_NAME = re.compile(r"^(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(\.cluster\.local)?\.?$")
PORTS: dict[int, int] = {int(k): v for k, v in json.loads(os.environ["STANDIN_PORTS"]).items()}
SERVICES_FILE = os.environ["STANDIN_SERVICES"]

_bind = socket.socket.bind
_getaddrinfo = socket.getaddrinfo


def bind(self: socket.socket, address: Any) -> None:
    if isinstance(address, tuple) and address[1] in PORTS:
        address = (LOCALHOST, PORTS[address[1]], *address[2:])
    _bind(self, address)


def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    match = SERVICE_NAME.match(host) if isinstance(host, str) else None
    if match is None:
        return _getaddrinfo(host, port, *args, **kwargs)
    with open(SERVICES_FILE) as file:
        services = json.load(file)
    target = services.get(f"{match['svc']}.{match['ns']}", {}).get(str(port))
    if target is None:
        raise socket.gaierror(socket.EAI_NONAME, f"{host}:{port}: no ready endpoint")
    return _getaddrinfo(LOCALHOST, target, *args, **kwargs)


def main(argv: list[str]) -> None:
    socket.socket.bind = bind  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    command, *args = argv
    if command == "jobpool":
        sys.argv = ["jobpool", *args]
        runpy.run_module("jobpool", run_name="__main__", alter_sys=True)
    elif command in ("python", "python3") and args[:1] == ["-c"]:
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<container>", "exec"), {"__name__": "__main__"})
    else:
        sys.exit(f"the kubelet stand-in cannot run {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

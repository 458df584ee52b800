"""A netio-exporter run with --web.config.file and its clients, and the test CA, for the web config and fleet
tests and the benchmarks."""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import sys
from pathlib import Path

from . import NetnsProcess, free_port, in_netns, require
from .pki import make_authority

LIGHT = ("--no-collector.tcp", "--no-collector.netstack")  # the server under test, not the collectors


def make_pki(directory: Path) -> Path:
    require(shutil.which("openssl") is not None, "openssl not installed")
    return make_authority(directory)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class WebExporter(NetnsProcess):
    """netio-exporter -P with --web.config.file, in ``ns`` on 127.0.0.1; clients over TLS when asked."""

    def __init__(self, ns: str, config: Path, tls: bool, *flags: str):
        self.port = free_port(ns)
        super().__init__(ns, [sys.executable, "-m", "exporter", "-P", "-a", "127.0.0.1", "-p", str(self.port),
                              "--web.config.file", str(config), *flags])
        self.tls = tls
        try:
            self.wait_listening(self.port)
        except BaseException:
            self.stop()
            raise

    def connect(self, context: ssl.SSLContext | None = None, timeout: float = 10) -> http.client.HTTPConnection:
        with in_netns(self.ns):
            if self.tls:
                connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=context)
            else:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            connection.connect()
        return connection

    def get(self, path: str = "/metrics", headers: dict | None = None, context: ssl.SSLContext | None = None):
        connection = self.connect(context)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

"""``--web.config.file``: TLS, extra response headers and basic auth, in the format of Prometheus'
exporter-toolkit (docs/web-configuration.md there), so the files users already have work here.

Relative file names are relative to the config file's directory, as in the toolkit. ``load()`` raises
``WebConfigError`` naming the key; ``Watcher`` re-reads the file and the certificate, key and CA files
when one of them changes (looked at no more than once a second) and keeps the old configuration, said
once, when the new one is bad. ``ssl`` is imported only when the file asks for TLS, ``bcrypt`` only
when it lists users.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("netio_exporter")

# keys users' files have that do not apply here: accepted, said once at load
_IGNORED = {"tls_server_config.prefer_server_cipher_suites": "the client's preference order is used",
            "tls_server_config.curve_preferences": "OpenSSL's default groups are used",
            "http_server_config.http2": "this server speaks HTTP/1.1 only"}
_UNSUPPORTED = {"cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file"}
# the toolkit's extraHTTPHeaders: name -> allowed values (None: any)
_HEADERS = {"Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
            "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None}
_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
_CLIENT_AUTH = {"NoClientCert": "CERT_NONE", "VerifyClientCertIfGiven": "CERT_OPTIONAL",
                "RequireAndVerifyClientCert": "CERT_REQUIRED"}
# Go's tls.CipherSuites() names -> IANA code points (OpenSSL names them differently; matched by code)
_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
}
# TLS 1.3 suites are not configurable in Go either: accepted, no effect
_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
# bcrypt of "fakepassword" (the toolkit's): unknown users cost a check too, so timing does not tell them apart
_UNKNOWN_USER_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
RELOAD_CHECK_SECONDS = 1.0
_VERIFIED_CACHE_SIZE = 64  # verified Authorization headers per configuration (only right ones are kept)
_BCRYPT_SHARE = 0.25  # of one CPU at most for uncached checks: about 3 a second at cost 10 (75 ms each)
_QUEUED_CHECKS = 2  # checks waiting or running; beyond them: 429


class WebConfigError(ValueError):
    """A bad web config; the message starts with the key."""


@dataclasses.dataclass
class WebConfig:
    path: str
    files: tuple[str, ...]  # whose changes trigger a reload: the config, certificate, key, client CA
    ssl_context: object | None  # ssl.SSLContext when TLS is on
    headers: tuple[tuple[str, str], ...]
    users: dict[str, bytes]  # user -> bcrypt hash
    verified: OrderedDict = dataclasses.field(default_factory=OrderedDict)  # sha256(header) -> user


def load(path: str) -> WebConfig:
    """Parse and check the file (and load the certificate and key); WebConfigError names the key."""
    import yaml
    try:
        with open(path, "rb") as file:
            document = yaml.safe_load(file)
    except OSError as error:
        raise WebConfigError(f"{path}: {error.strerror or error}")
    except yaml.YAMLError as error:
        raise WebConfigError(f"{path}: not YAML: {str(error).splitlines()[0]}")
    document = {} if document is None else document
    _mapping(document, "the file")
    base = os.path.dirname(os.path.abspath(path))
    _known(document, "", ("tls_server_config", "http_server_config", "basic_auth_users"))
    http = _mapping(document.get("http_server_config") or {}, "http_server_config")
    _known(http, "http_server_config", ("headers", "http2"))
    headers = []
    for name, value in _mapping(http.get("headers") or {}, "http_server_config.headers").items():
        key = f"http_server_config.headers.{name}"
        if name not in _HEADERS:
            raise WebConfigError(f"{key}: cannot be configured; expected one of {', '.join(_HEADERS)}")
        allowed = _HEADERS[name]
        if not isinstance(value, str) or (allowed is not None and value not in allowed) \
                or not (value.isascii() and value.isprintable()):  # no CR or LF: a header line of its own
            expected = " or ".join(allowed) if allowed else "a one-line ASCII string"
            raise WebConfigError(f"{key}: expected {expected}, got {value!r}")
        if value:  # blank means unset, as in the toolkit
            headers.append((name, value))
    users = {}
    for user, hashed in _mapping(document.get("basic_auth_users") or {}, "basic_auth_users").items():
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"basic_auth_users.{user}: expected a bcrypt hash ($2y$10$...)")
        users[str(user)] = hashed.encode()
    files = [os.path.abspath(path)]
    context = None
    tls = document.get("tls_server_config")
    if tls:
        context = _ssl_context(_mapping(tls, "tls_server_config"), base, files)
    return WebConfig(path, tuple(files), context, tuple(headers), users)


def _mapping(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise WebConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _known(section: dict, prefix: str, keys: tuple[str, ...]) -> None:
    for key in section:
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in _IGNORED:
            log.info("web config: %s has no effect here: %s", full, _IGNORED[full])
        elif key in _UNSUPPORTED and prefix == "tls_server_config":
            raise WebConfigError(f"{full}: inline PEM is not supported; use {_UNSUPPORTED[key]}")
        elif key not in keys:
            raise WebConfigError(f"{full}: unknown key; expected one of {', '.join(keys)}")


def _ssl_context(tls: dict, base: str, files: list[str]):
    import ssl
    _known(tls, "tls_server_config", ("cert_file", "key_file", "client_auth_type", "client_ca_file",
                                      "min_version", "max_version", "cipher_suites",
                                      "prefer_server_cipher_suites", "curve_preferences"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key in ("min_version", "max_version"):
        version = tls.get(key, "TLS12" if key == "min_version" else "TLS13")
        if version not in _VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: expected one of {', '.join(_VERSIONS)}, got {version!r}")
        try:
            setattr(context, "minimum_version" if key == "min_version" else "maximum_version",
                    ssl.TLSVersion["TLSv1" if version == "TLS10" else f"TLSv1_{version[-1]}"])
        except ValueError as error:  # e.g. TLS 1.0 below OpenSSL's security level
            raise WebConfigError(f"tls_server_config.{key}: {version} is not available here: {error}")
    if context.minimum_version > context.maximum_version:
        raise WebConfigError("tls_server_config.min_version: above max_version")
    paths = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = tls.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise WebConfigError(f"tls_server_config.{key}: expected a file name")
        paths[key] = os.path.join(base, value)
        files.append(paths[key])
    for key in ("cert_file", "key_file"):
        if key not in paths:
            raise WebConfigError(f"tls_server_config.{key}: missing; TLS needs cert_file and key_file")
    try:
        context.load_cert_chain(paths["cert_file"], paths["key_file"])
    except (OSError, ssl.SSLError) as error:
        raise WebConfigError(f"tls_server_config.cert_file: cannot load {paths['cert_file']} with key "
                             f"{paths['key_file']}: {getattr(error, 'strerror', None) or error}")
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth not in _CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type: expected one of {', '.join(_CLIENT_AUTH)} "
                             f"(RequestClientCert and RequireAnyClientCert skip verification: not offered), got {auth!r}")
    context.verify_mode = getattr(ssl, _CLIENT_AUTH[auth])
    if ("client_ca_file" in paths) != (auth != "NoClientCert"):
        raise WebConfigError("tls_server_config.client_ca_file: " + (
            "given without a client_auth_type that verifies client certificates" if auth == "NoClientCert"
            else f"needed by client_auth_type {auth}"))
    if "client_ca_file" in paths:
        try:
            context.load_verify_locations(cafile=paths["client_ca_file"])
        except (OSError, ssl.SSLError) as error:
            raise WebConfigError(f"tls_server_config.client_ca_file: cannot load {paths['client_ca_file']}: "
                                 f"{getattr(error, 'strerror', None) or error}")
    suites = tls.get("cipher_suites")
    if suites:
        if not isinstance(suites, list):
            raise WebConfigError("tls_server_config.cipher_suites: expected a list")
        available = {cipher["id"] & 0xFFFF: cipher["name"] for cipher in context.get_ciphers()}
        names = []
        for suite in suites:
            if suite in _TLS13_SUITES:
                continue
            if suite not in _CIPHER_SUITES:
                raise WebConfigError(f"tls_server_config.cipher_suites: unknown cipher {suite!r}")
            if _CIPHER_SUITES[suite] not in available:
                raise WebConfigError(f"tls_server_config.cipher_suites: {suite} is not available in this OpenSSL")
            names.append(available[_CIPHER_SUITES[suite]])
        if names:
            context.set_ciphers(":".join(names))
    return context


def _stamp(files: tuple[str, ...]) -> tuple:
    stamps = []
    for name in files:
        try:
            status = os.stat(name)
            stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class Watcher:
    """The current web config: ``current()`` re-reads it when one of its files changed."""

    def __init__(self, path: str):
        self.config = load(path)
        self.tls = self.config.ssl_context is not None
        self._stamp = _stamp(self.config.files)
        self._checked = time.monotonic()
        self._last_error = ""

    def current(self) -> WebConfig:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self.config
        self._checked = now
        stamp = _stamp(self.config.files)
        if stamp == self._stamp:
            return self.config
        try:
            config = load(self.config.path)
            if (config.ssl_context is not None) != self.tls:
                raise WebConfigError("tls_server_config: switching between HTTP and HTTPS needs a restart")
        except WebConfigError as error:
            if str(error) != self._last_error:
                self._last_error = str(error)
                log.error("web config not reloaded, keeping the previous one: %s", error)
            self._stamp = stamp  # said once; tried again when a file changes again
            return self.config
        self.config, self._stamp, self._last_error = config, _stamp(config.files), ""
        log.info("web config reloaded from %s", config.path)
        return config


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against a config's bcrypt hashes without letting a flood of
    wrong passwords slow the right ones: verified headers are cached (bounded, keyed by a hash of the
    header; right ones only, so a flood cannot evict them) and answer at once; other checks run one at a
    time on one worker thread that rests three times as long as each check took (a quarter of a CPU at
    most, a few checks a second), with at most two waiting (``check`` returns None beyond that: 429).
    The worker runs at the lowest priority (nice 19), so scrapes, and whatever else the host runs, go
    first."""

    def __init__(self):
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="netio-bcrypt", initializer=_lowest_priority)
        self._lock = threading.Lock()
        self._queued = 0

    def cached(self, config: WebConfig, header: str | None) -> str | None:
        """The user if ``header`` was verified before under ``config``."""
        if header is None:
            return None
        key = hashlib.sha256(header.encode("latin-1")).digest()
        with self._lock:  # the worker adds entries
            user = config.verified.get(key)
            if user is not None:
                config.verified.move_to_end(key)
        return user

    def check(self, config: WebConfig, header: str | None) -> Future | None:
        """A future of the user (or "" when wrong), or None when too many checks are waiting already."""
        user, password = _credentials(header)
        if user is None:
            future = Future()
            future.set_result("")
            return future
        with self._lock:
            if self._queued >= _QUEUED_CHECKS:
                return None
            self._queued += 1
        return self._worker.submit(self._verify, config, header, user, password)

    def _verify(self, config: WebConfig, header: str, user: str, password: bytes) -> str:
        import bcrypt
        started = time.thread_time()
        try:
            right = bcrypt.checkpw(password, config.users.get(user, _UNKNOWN_USER_HASH)) and user in config.users
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            right = False
        time.sleep((time.thread_time() - started) * (1 / _BCRYPT_SHARE - 1))  # the worker's duty cycle
        with self._lock:
            self._queued -= 1
            if not right:
                return ""
            config.verified[hashlib.sha256(header.encode("latin-1")).digest()] = user
            while len(config.verified) > _VERIFIED_CACHE_SIZE:
                config.verified.popitem(last=False)
        return user

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def _lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux keeps a nice value per thread; raising it needs no privilege)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as error:  # a seccomp filter without setpriority: checks still run, at the usual priority
        log.warning("bcrypt checks run at the usual priority: %s", error)


def _credentials(header: str | None) -> tuple[str | None, bytes]:
    """(user, password) of a Basic Authorization header, or (None, b"") when it is not one."""
    if not header:
        return None, b""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return None, b""
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None, b""
    return user.decode("utf-8", "replace"), password

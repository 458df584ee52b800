"""--web.config.file (exporter-toolkit format): checks at start, TLS with a CA made here with openssl (server
and client certificates), basic auth with bcrypt, a wrong-password flood, and reloads."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from tests.support import in_netns
from tests.support.pki import make_certificate
from tests.support.web import LIGHT, WebExporter, basic, make_pki

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def web_exporter(netns):
    started = []

    def start(config: Path, tls: bool = False, *flags: str) -> WebExporter:
        started.append(WebExporter(netns(), config, tls, *LIGHT, *flags))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def client_context(pki: Path, certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if certificate:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def _start_fails(config_text: str, tmp_path: Path) -> str:
    config = tmp_path / "web.yml"
    config.write_text(config_text)
    result = subprocess.run([sys.executable, "-m", "exporter", "-P", "--web.config.file", str(config)],
                            capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text, key", [
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  bogus: 1\n", "tls_server_config.bogus"),
    ("nonsense: 1\n", "nonsense"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "http_server_config.headers.X-Powered-By"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: \"a\\rb\"\n",
     "http_server_config.headers.Content-Security-Policy"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
    ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n",
     "tls_server_config.min_version"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_MADE_UP]\n",
     "tls_server_config.cipher_suites"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n",
     "tls_server_config.client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert: inline\n", "tls_server_config.cert"),
    ("- a list\n", "the file"),
    ("a: [unclosed\n", "web.yml: not YAML"),
])
def test_a_bad_file_at_start_exits_2_naming_the_key(pki, tmp_path, text, key):
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / name, tmp_path / name)
    line = _start_fails(text, tmp_path)
    assert line.startswith("netio-exporter: --web.config.file: "), line
    assert f" {key}" in line or f"/{key}" in line, line


def test_a_missing_file_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporter", "-P", "--web.config.file", str(tmp_path / "none.yml")],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip() == f"netio-exporter: --web.config.file: {tmp_path}/none.yml: No such file or directory"


def test_log_mode_refuses_a_web_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporter", "-l", "-", "--web.config.file", "x.yml"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "--web.config.file: log mode (-l)" in result.stderr


def test_tls_scrape_and_plain_http_to_the_tls_port(pki, tmp_path, web_exporter):
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
                      "  min_version: TLS12\n  prefer_server_cipher_suites: true\n"
                      "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
                      "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
                      "    Strict-Transport-Security: max-age=31536000\n")
    exporter = web_exporter(config, True)
    status, headers, body = exporter.get(context=client_context(pki))
    assert status == 200 and b"netio_network_up{device=\"lo\"}" in body
    assert headers["X-Frame-Options"] == "deny" and headers["Strict-Transport-Security"] == "max-age=31536000"
    connection = exporter.connect(client_context(pki))  # keep-alive over TLS
    for _ in range(3):
        connection.request("GET", "/metrics")
        assert connection.getresponse().read().endswith(b"\n")
    assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    connection.close()
    # TLS 1.2 with the one cipher suite allowed
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    connection = exporter.connect(context)
    assert connection.sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    connection.close()
    # plain HTTP to the TLS port: the connection ends, promptly, with no answer; the server carries on
    with in_netns(exporter.ns):
        plain = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
        start = time.monotonic()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            plain.request("GET", "/metrics", headers={"Host": "x"})
            plain.getresponse().read()
        assert time.monotonic() - start < 3
        plain.close()
    assert exporter.get("/-/healthy", context=client_context(pki))[0] == 200
    assert "has no effect here" in exporter.stderr()  # prefer_server_cipher_suites and http2, one line each
    stderr = exporter.stderr()
    assert stderr.count("prefer_server_cipher_suites") == 1 and stderr.count("http2") == 1
    assert "https://127.0.0.1:" in stderr and "Traceback" not in stderr


def test_client_certificate_mode(pki, tmp_path, web_exporter):
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
                      f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/ca.crt\n")
    exporter = web_exporter(config, True)
    assert exporter.get(context=client_context(pki, certificate=True))[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):  # TLS 1.3: the alert may come with the first read
        exporter.get(context=client_context(pki))
    # a certificate from another CA is refused too
    other = make_pki(tmp_path / "other")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exporter.get(context=_foreign(pki, other))
    assert exporter.get(context=client_context(pki, certificate=True))[0] == 200


def _foreign(pki: Path, other: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(other / "client.crt", other / "client.key")
    return context


def test_basic_auth(tmp_path, web_exporter):
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    exporter = web_exporter(config)
    status, _, body = exporter.get(headers={"Authorization": basic("alice", "right")})
    assert status == 200 and b"netio_network_up" in body
    for headers in ({}, {"Authorization": basic("alice", "wrong")}, {"Authorization": basic("bob", "right")},
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}):
        status, answer, _ = exporter.get(headers=headers)
        assert status == 401 and answer["WWW-Authenticate"].startswith("Basic"), headers
    for path in ("/", "/nope"):  # every path but the health probe
        assert exporter.get(path)[0] == 401
    status, _, body = exporter.get("/-/healthy")
    assert status == 200 and body == b"Healthy\n"
    assert exporter.get("/", headers={"Authorization": basic("alice", "right")})[0] == 200


_FLOOD = """
import base64, collections, http.client, json, sys, threading, time
port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
answers = collections.Counter()
def flood(number):
    deadline, attempt = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        attempt += 1
        secret = base64.b64encode(f"prometheus:guess{number}-{attempt}".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/metrics", headers={"Authorization": "Basic " + secret})
            response = connection.getresponse()
            response.read()
            answers[response.status] += 1
        except OSError as error:
            answers[type(error).__name__] += 1
        finally:
            connection.close()
threads = [threading.Thread(target=flood, args=(n,)) for n in range(clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(answers))
"""


def test_a_wrong_password_flood_does_not_slow_valid_scrapes(tmp_path, web_exporter):
    """20 s of wrong passwords from 32 clients (another process; bcrypt cost 10): the right one, verified
    once and cached, is answered at once; the flood gets 401, or 429 beyond a few checks per second, each
    a second late."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = web_exporter(config)
    valid = {"Authorization": basic("prometheus", "right")}
    assert exporter.get(headers=valid)[0] == 200
    connection = exporter.connect()

    def scrape_times(until) -> list[float]:
        times = []
        while not until():
            start = time.perf_counter()
            connection.request("GET", "/metrics", headers=valid)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            assert response.status == 200
            time.sleep(0.05)
        return times

    quiet_end = time.monotonic() + 5
    quiet = statistics.quantiles(scrape_times(lambda: time.monotonic() > quiet_end), n=100)[98]
    flood = subprocess.Popen(["ip", "netns", "exec", exporter.ns, sys.executable, "-c", _FLOOD, str(exporter.port),
                              "20", "32"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        times = scrape_times(lambda: flood.poll() is not None)
    finally:
        answers = json.loads(flood.communicate(timeout=30)[0])
        connection.close()
    p99 = statistics.quantiles(times, n=100)[98]
    assert set(answers) == {"401", "429"}, answers
    assert answers["401"] <= 20 * 5  # bcrypt checks: a few a second
    assert p99 < 0.020, (f"p99 {p99 * 1e3:.1f} ms (quiet {quiet * 1e3:.1f} ms) over {len(times)} scrapes, "
                         f"median {statistics.median(times) * 1e3:.1f} ms; {answers}")  # the 20 ms


def test_bcrypt_checks_run_at_the_lowest_priority(tmp_path, web_exporter):
    """The one thread that runs bcrypt is at nice 19, so a flood's checks yield the CPU to scrapes."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    exporter = web_exporter(config)
    assert exporter.get(headers={"Authorization": basic("alice", "wrong")})[0] == 401
    nice = sorted(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19: nice
                  for task in Path(f"/proc/{exporter.pid}/task").iterdir())
    assert nice[-1] == 19 and set(nice[:-1]) == {0}, nice  # one thread; the rest keep their priority


def test_reload(pki, tmp_path, web_exporter):
    """Users and headers follow the file; a bad file keeps the old config (said once); a replaced
    certificate is served to new connections."""
    directory = tmp_path / "tls"
    shutil.copytree(pki, directory)
    config = directory / "web.yml"
    first = bcrypt.hashpw(b"one", bcrypt.gensalt(4)).decode()
    second = bcrypt.hashpw(b"two", bcrypt.gensalt(4)).decode()
    tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"  # relative to the file
    config.write_text(tls + f"basic_auth_users:\n  alice: '{first}'\n")
    exporter = web_exporter(config, True)
    context = client_context(pki)
    assert exporter.get(headers={"Authorization": basic("alice", "one")}, context=context)[0] == 200

    def replace(path: Path, text: str) -> None:
        path.with_suffix(".new").write_text(text)
        os.replace(path.with_suffix(".new"), path)
        time.sleep(1.2)  # the exporter looks at most once a second

    replace(config, tls + f"basic_auth_users:\n  alice: '{second}'\nhttp_server_config:\n  headers:\n"
                          "    X-Content-Type-Options: nosniff\n")
    assert exporter.get(headers={"Authorization": basic("alice", "one")}, context=context)[0] == 401
    status, headers, _ = exporter.get(headers={"Authorization": basic("alice", "two")}, context=context)
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    replace(config, tls + "basic_auth_users:\n  alice: not-a-hash\n")
    for _ in range(3):
        assert exporter.get(headers={"Authorization": basic("alice", "two")}, context=context)[0] == 200
    assert exporter.stderr().count("web config not reloaded") == 1
    assert "basic_auth_users.alice" in exporter.stderr()
    # certificate rotation: a new server certificate (same CA) reaches new connections
    connection = exporter.connect(context)
    old_serial = ssl.DER_cert_to_PEM_cert(connection.sock.getpeercert(binary_form=True))
    connection.close()
    make_certificate(directory, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    replace(config, tls + f"basic_auth_users:\n  alice: '{second}'\n")
    time.sleep(0.1)
    connection = exporter.connect(context)
    assert ssl.DER_cert_to_PEM_cert(connection.sock.getpeercert(binary_form=True)) != old_serial
    connection.request("GET", "/metrics", headers={"Authorization": basic("alice", "two")})
    assert connection.getresponse().status == 200
    connection.close()
    assert "Traceback" not in exporter.stderr()

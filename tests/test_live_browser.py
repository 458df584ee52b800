"""The live page in a real headless browser: Debian's chromium and chromium-driver driven by selenium.

The exporter runs in the test's namespace B without -P; chromium runs there too (selenium starts
chromedriver from a thread inside B, so the driver, the browser and selenium's own sockets all live
in B). Namespace A sends paced UDP through the veth pair; the page's rx chart for B's end must reach
the rate the test sends. Charts expose what they drew in ``data-last`` (latest value per series).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time

import pytest

from exporter.collectors import Scrape
from exporter.collectors.link import LinkCollector
from exporter.collectors.process import ProcessCollector
from exporter.live import LiveFeed
from exporter.server import MetricsApp, Server
from tests.support import NetnsProcess, enter_netns, free_port, in_netns, require, veth_pair

FRAME_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4, UDP headers: veth counts the whole frame
PAYLOAD = 1000
PACKETS_PER_SECOND = 2000

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def _browser_available() -> bool:
    return shutil.which("chromium") is not None and shutil.which("chromedriver") is not None


@pytest.fixture
def pair(netns):
    ns_a, ns_b = netns(), netns()
    return veth_pair(ns_a, ns_b)


def start_live_exporter(ns: str, *args: str) -> tuple[NetnsProcess, int]:
    port = free_port(ns)
    process = NetnsProcess(ns, [sys.executable, "-m", "exporter", "-a", "127.0.0.1", "-p", str(port), *args])
    process.wait_listening(port)
    return process, port


@pytest.fixture
def browser_in(request):
    """Factory: ``browser_in(ns)`` gives a headless chromium whose driver runs in namespace ``ns``."""
    require(_browser_available(), "chromium and chromium-driver are not installed (test.sh installs them)")
    drivers = []

    def start(ns: str):
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,2000", "--no-first-run", "--disable-extensions"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=shutil.which("chromedriver"))
        driver = webdriver.Chrome(options=options, service=service)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def _send_paced_udp(ns: str, destination: str, stop: threading.Event) -> None:
    """PACKETS_PER_SECOND datagrams of PAYLOAD bytes, in 10 ms batches on a fixed grid."""
    enter_netns(ns)  # this thread only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        payload = b"x" * PAYLOAD
        start, batches = time.monotonic(), 0
        while not stop.is_set():
            for _ in range(PACKETS_PER_SECOND // 100):
                sock.sendto(payload, (destination, 9))
            batches += 1
            time.sleep(max(0.0, start + batches / 100 - time.monotonic()))


def _last(driver, chart: str) -> dict:
    elements = driver.find_elements(By.CSS_SELECTOR, f'[data-chart="{chart}"]')
    return json.loads(elements[0].get_attribute("data-last") or "{}") if elements else {}


def _wait(condition, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _severe_console_entries(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_live_page_draws_the_traffic_the_test_sends(pair, browser_in, tmp_path):
    ns_a, _, _, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    exporter, port = start_live_exporter(ns_b, "--user-period", "500")
    stop = threading.Event()
    sender = threading.Thread(target=_send_paced_udp, args=(ns_a, ip_b, stop), daemon=True)
    try:
        with in_netns(ns_b):
            driver = browser_in(ns_b)
            driver.get(f"http://127.0.0.1:{port}/")
            sender.start()
            expected = PACKETS_PER_SECOND * (PAYLOAD + FRAME_OVERHEAD)
            rx = _wait(lambda: (_last(driver, f"link-bytes:{dev_b}").get("rx") or 0) > 0.9 * expected and
                       _last(driver, f"link-bytes:{dev_b}")["rx"], what=f"{dev_b}'s rx chart near {expected} B/s")
            assert abs(rx - expected) <= 0.1 * expected, (rx, expected)
            packets = _last(driver, f"link-packets:{dev_b}")["rx"]
            assert abs(packets - PACKETS_PER_SECOND) <= 0.1 * PACKETS_PER_SECOND
            # Netto's core view: NET_RX samples as stacked bars over time
            _wait(lambda: int(driver.find_element(By.CSS_SELECTOR, '[data-chart="netstack-netrx"]')
                              .get_attribute("data-bars") or 0) > 0, what="NET_RX bars")
            # mac is off without --collector.mac.device: its panel says so instead of staying blank
            why = driver.find_element(By.CSS_SELECTOR, '[data-card="mac-top"] .why')
            assert why.is_displayed() and "--collector.mac.device" in why.text
            time.sleep(1)
            driver.save_screenshot(str(tmp_path / "live.png"))
            assert (tmp_path / "live.png").stat().st_size > 10000
            assert _severe_console_entries(driver) == []
            started = time.monotonic()
            assert exporter.stop() == 0 and time.monotonic() - started < 5  # SIGTERM with a page open
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        exporter.stop()


def test_a_collector_turned_off_shows_why(netns, browser_in):
    ns = netns()
    exporter, port = start_live_exporter(ns, "--no-collector.tcp", "-f", "0", "--user-period", "200")
    try:
        with in_netns(ns):
            driver = browser_in(ns)
            driver.get(f"http://127.0.0.1:{port}/")
            why = driver.find_element(By.CSS_SELECTOR, '[data-card="tcp-states"] .why')
            _wait(lambda: "--no-collector.tcp" in why.text, what="the tcp panel's reason")
            rx_why = driver.find_element(By.CSS_SELECTOR, '[data-card="netstack-netrx"] .why')
            _wait(lambda: "-f 0" in rx_why.text or "netstack" in rx_why.text, what="the NET_RX panel's reason")
            assert _severe_console_entries(driver) == []
    finally:
        exporter.stop()


def test_replay_view_draws_a_log(pair, browser_in, tmp_path):
    """A jsonl log written by a log-mode exporter, opened through the page's file picker."""
    ns_a, _, ip_a, _ = pair["a"]
    ns_b, dev_b, ip_b, _ = pair["b"]
    path = tmp_path / "netio.jsonl"
    logger = NetnsProcess(ns_b, [sys.executable, "-m", "exporter", "-l", str(path), "--log-format", "jsonl",
                                 "--interval", "0.5", "-f", "0"])
    stop = threading.Event()
    sender = threading.Thread(target=_send_paced_udp, args=(ns_a, ip_b, stop), daemon=True)
    sender.start()
    try:
        _wait(lambda: path.exists() and path.read_text().count("\n") >= 6, what="six log lines")
    finally:
        stop.set()
        sender.join()
        logger.stop()
    lines = path.read_text().count("\n")
    exporter, port = start_live_exporter(ns_b, "--user-period", "500")
    try:
        with in_netns(ns_b):
            driver = browser_in(ns_b)
            driver.get(f"http://127.0.0.1:{port}/")
            driver.find_element(By.ID, "replay").send_keys(str(path))
            _wait(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-mode") == "replay",
                  what="the replay view")
            chart = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, f'[data-chart="link-bytes:{dev_b}"]'),
                          what="the replayed interface's chart")[0]
            assert int(chart.get_attribute("data-points")) == lines
            assert "replay of netio.jsonl" in driver.find_element(By.ID, "status").text
            time.sleep(1.5)  # live events must not overwrite the replay
            assert int(chart.get_attribute("data-points")) == lines
            assert _severe_console_entries(driver) == []
    finally:
        exporter.stop()


def test_ten_pages_read_the_collectors_once_per_period(netns, browser_in):
    """Ten browser tabs on one exporter (served in-process, so the test counts the collectors' reads):
    one read per period, not one per page; closing the tabs stops the sampler. Each tab uses its own
    loopback address: a browser opens at most six HTTP/1.1 connections to one host."""
    ns = netns()
    period = 0.25
    with in_netns(ns):  # the collectors' and the server's sockets live in the namespace
        link, process = LinkCollector(), ProcessCollector()
        reads = []
        original_read = link.read
        link.read = lambda: reads.append(time.monotonic()) or original_read()
        scrape = Scrape([link], [process])
        feed = LiveFeed(scrape, period)
        server = Server(MetricsApp(scrape, feed), "0.0.0.0", 0)
    server.start()
    port = server.server_address[1]
    try:
        with in_netns(ns):
            driver = browser_in(ns)
            for index in range(10):
                if index:
                    driver.switch_to.new_window("tab")
                driver.get(f"http://127.0.0.{index + 1}:{port}/")
            tabs = driver.window_handles
            time.sleep(2)
            start, first = time.monotonic(), len(reads)
            time.sleep(3)
            elapsed, counted = time.monotonic() - start, len(reads) - first
            for tab in tabs:
                driver.switch_to.window(tab)
                events = driver.find_element(By.TAG_NAME, "body").get_attribute("data-events")
                assert int(events) >= 10  # every tab receives the events (a hidden tab draws them when shown)
            assert elapsed / period - 2 <= counted <= elapsed / period + 2, (counted, elapsed)
            for tab in tabs:
                driver.switch_to.window(tab)
                driver.close()
            _wait(lambda: not feed.sampling, timeout=5, what="the sampler to stop")
            stopped = len(reads)
            time.sleep(4 * period)
            assert len(reads) == stopped
    finally:
        feed.close()
        server.close()
        scrape.close()


def test_replay_draws_mac_clients_from_a_log(netns, browser_in, tmp_path):
    """The MAC panel, from a log as the mac collector writes it (made by hand: the mac collector needs a
    gateway topology that tests/test_mac.py builds)."""
    def record(second: int) -> str:
        return json.dumps({
            "time": f"2026-12-01T08:30:{second:02d}.000Z", "interval_seconds": 2.0, "counters_are": "deltas",
            "collectors": {"mac": None, "process": None},
            "counters": {
                "netio_mac_download_bytes_total": {"labels": ["device", "mac"], "samples": [
                    ["br-lan", "02:00:00:00:00:01", 8000], ["br-lan", "02:00:00:00:00:02", 200]]},
                "netio_mac_upload_bytes_total": {"labels": ["device", "mac"], "samples": [
                    ["br-lan", "02:00:00:00:00:01", 1000], ["br-lan", "02:00:00:00:00:02", 0]]}},
            "gauges": {"netio_mac_info": {"labels": ["device", "mac", "ipv4", "ipv6"], "samples": [
                ["br-lan", "02:00:00:00:00:01", "192.0.2.10", "2001:db8::10", 1],
                ["br-lan", "02:00:00:00:00:02", "192.0.2.11", "", 1]]}}})
    path = tmp_path / "mac.jsonl"
    path.write_text("".join(record(second) + "\n" for second in (2, 4, 6)) + "not json\n")
    ns = netns()
    exporter, port = start_live_exporter(ns, "-f", "0")
    try:
        with in_netns(ns):
            driver = browser_in(ns)
            driver.get(f"http://127.0.0.1:{port}/")
            driver.find_element(By.ID, "replay").send_keys(str(path))
            _wait(lambda: "1 line not understood" in driver.find_element(By.ID, "status").text, what="the replay")
            rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
                    for row in driver.find_elements(By.CSS_SELECTOR, '[data-card="mac-top"] table tr')[1:]]
            assert rows == [["br-lan", "02:00:00:00:00:01", "192.0.2.10", "2001:db8::10", "4.00 kB/s", "500 B/s"],
                            ["br-lan", "02:00:00:00:00:02", "192.0.2.11", "", "100 B/s", "0 B/s"]]
            why = driver.find_element(By.CSS_SELECTOR, '[data-card="tcp-states"] .why')
            assert "--no-collector.tcp" in why.text  # a log without tcp: its panels say the collector was off
            assert _severe_console_entries(driver) == []
    finally:
        exporter.stop()

"""netio-exporter: network I/O of a Linux host for Prometheus."""

__version__ = "0.1.0"

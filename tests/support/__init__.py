"""The shared test and benchmark harness."""

from .kernel import (IN_CI, ExporterProcess, close_after_test, close_registered, free_port, prometheus_api,
                     prometheus_query, promtool_problems, quiet_ipv6, require, require_namespaces, run, samples,
                     terminate, unique_name, value, veth_pair)
from .netns import NetnsProcess, enter_netns, in_netns

__all__ = ["IN_CI", "ExporterProcess", "NetnsProcess", "close_after_test", "close_registered", "enter_netns",
           "free_port", "in_netns", "prometheus_api", "prometheus_query", "promtool_problems", "quiet_ipv6", "require",
           "require_namespaces", "run", "samples", "terminate", "unique_name", "value", "veth_pair"]

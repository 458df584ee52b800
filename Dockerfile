# netio-exporter. Run it in the host's network namespace, with the capabilities of the collectors you use
# (link and tcp need none; netstack CAP_BPF + CAP_PERFMON + CAP_SYSLOG; mac CAP_BPF + CAP_NET_ADMIN):
#   docker build -t netio-exporter .
#   docker run --network host --cap-drop ALL --cap-add BPF --cap-add PERFMON --cap-add SYSLOG --cap-add NET_ADMIN netio-exporter
# (Docker >= 23: its default seccomp profile allows bpf() and perf_event_open() with CAP_BPF and CAP_PERFMON)

# The wheel's build compiles the eBPF programs with clang (setup.py), so they ship inside it.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libbpf-dev linux-libc-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
# libbpf1: the loader the eBPF collectors call through ctypes.
RUN apt-get update && apt-get install -y --no-install-recommends libbpf1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
EXPOSE 7070
ENTRYPOINT ["netio-exporter"]
CMD ["-P", "--port", "7070"]

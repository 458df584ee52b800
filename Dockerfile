# netio-exporter: run with the host's network namespace to see the host's interfaces:
#   docker build -t netio-exporter . && docker run --network host netio-exporter
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
EXPOSE 7070
ENTRYPOINT ["netio-exporter"]
CMD ["-P", "--port", "7070"]

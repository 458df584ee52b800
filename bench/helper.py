"""A helper process that holds a collector for a benchmark: one command line in, one answer line out."""

from __future__ import annotations

import subprocess


class Helper:
    """``command`` started with pipes; it prints "ready" once its collector has loaded, or why not."""

    def __init__(self, command: list[str], bench: str):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        answer = self.process.stdout.readline().strip()
        if answer != "ready":
            self.stop()
            raise SystemExit(f"{bench}: the collector cannot load: {answer}")

    def ask(self, what: str) -> str:
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child, by its Popen handle (pid)
                self.process.wait()

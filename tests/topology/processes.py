"""Long-running servers started by the topology tests, each with a hard deadline."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..helpers import stop, wait_for_port

# No server a test starts may outlive this, even when the test run itself is killed.
SERVER_LIFETIME_SECONDS = 600


@dataclass
class Server:
    """A server process listening on ``port``; it can be stopped and started again on that port."""

    name: str
    command: list[str]
    port: int
    cwd: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["timeout", str(SERVER_LIFETIME_SECONDS), *self.command],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so that stop() reaches every process it starts.
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log()}") from error
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

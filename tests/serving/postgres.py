"""A throwaway PostgreSQL server for the store's tests, from the server binaries Debian's `postgresql` installs.

``start_postgres()`` runs ``initdb`` and ``pg_ctl start`` in a fresh folder (as the ``postgres`` user when the
tests run as root, since PostgreSQL refuses to run as root), listening on 127.0.0.1 only with trust auth for
the one role it creates; ``stop()`` shuts it down and removes the folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.serving.server import free_port

INSTALL_HINT = "needs PostgreSQL's server binaries: `sudo apt-get install -y postgresql` (or run `make test` as root)"


def bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (on PATH or Debian's /usr/lib/postgresql/N/bin), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@dataclass
class Postgres:
    root: Path
    port: int
    as_user: list[str]
    bin: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://rlhf@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"postgresql://rlhf@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    """Start a server; raises RuntimeError (with the server's log) if it does not come up."""
    pg_bin = bindir()
    if pg_bin is None:
        raise FileNotFoundError(INSTALL_HINT)
    root = Path(tempfile.mkdtemp(prefix="rlhf-test-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", free_port()
    steps = [
        [str(pg_bin / "initdb"), "-D", str(data), "-U", "rlhf", "--auth=trust", "-E", "UTF8", "--no-instructions"],
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
    ]
    for cmd in steps:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            detail = done.stderr[-2000:] + (log.read_text()[-2000:] if log.exists() else "")
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"{cmd[0]} failed: {detail}")
    return Postgres(root, port, as_user, pg_bin)

"""The run's server password: made per run, never printed, handed over the ordinary way.

Every server of a run requires SCRAM-SHA-256 for its superuser, replication included. The
password is random per run and lives in one libpq password file (`pgpass`, mode 0600) in
the run's data folder; clients name that file (`passfile=` in a DSN, or `PGPASSFILE`), so
`psql`, `pg_basebackup`, a standby's WAL receiver, the components and the checks all
authenticate without the password ever appearing on a command line, in a log or in a
report. Another local user cannot read the file, and so cannot connect.

The server side stores only the SCRAM verifier (RFC 5802/7677), computed here: the
plaintext never reaches a server either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PASSFILE_NAME = "pgpass"
ENV = "PGPASSFILE"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def new_password() -> str:
    """32 random bytes, URL-safe: no character a password file would need escaped."""
    return secrets.token_urlsafe(32)


def write_passfile(folder: Path, password: str, user: str = "postgres") -> Path:
    """A password file that matches every host, port and database for `user`."""
    path = folder / PASSFILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"*:*:*:{user}:{password}\n")
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return path


def read_password(passfile: Path) -> str:
    """The password a file written by `write_passfile` holds."""
    line = passfile.read_text(encoding="utf-8").splitlines()[0]
    return line.split(":", 4)[4]


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What `ALTER ROLE ... PASSWORD` stores for `password` under scram-sha-256, so the
    plaintext is never sent to a server."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def set_password_sql(user: str, password: str) -> str:
    """The statement that gives `user` this password (as a verifier; quoted for SQL)."""
    verifier = scram_verifier(password).replace("'", "''")
    return f"ALTER ROLE \"{user}\" PASSWORD '{verifier}';\n"

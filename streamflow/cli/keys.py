"""`streamflow keys`: make a CURVE keypair for securing streams across machines.

Writes DIR/NAME.key (the public key: copy it to the peers) and DIR/NAME.key_secret
(both keys: stays on this host, readable by its owner only) with pyzmq's
``zmq.auth.create_certificates``. A producer admits the receivers whose NAME.key
lies in its --curve-authorized folder; a receiver names the producer's NAME.key
with --curve-server-key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import zmq.auth

from streamflow.cli.outputs import output_folder
from streamflow.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="make a CURVE keypair (NAME.key, NAME.key_secret) for tcp across hosts",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("dir", metavar="DIR", help="folder to write the key files to (created if missing)")
    p.add_argument("--name", default=os.uname().nodename,
                   help="file name stem of the keypair (default: this host's name)")
    p.set_defaults(func=run)


def make_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new keypair ``directory/name.key`` and ``.key_secret``; ConfigError rather than overwrite."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}: expected a plain file name stem")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a key (remove it or pick another --name)")
    output_folder(directory, "key folder")
    directory.mkdir(parents=True, exist_ok=True)
    written_public, written_secret = zmq.auth.create_certificates(directory, name)
    os.chmod(written_secret, 0o600)
    return Path(written_public), Path(written_secret)


def run(args: argparse.Namespace) -> int:
    public, secret = make_keys(Path(args.dir), args.name)
    print(f"wrote {public} (public: give it to peers) and {secret} (secret: keep it on this host)")
    return 0

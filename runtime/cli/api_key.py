"""``dcssa-rt api-key add|list|revoke``: the API keys ``dcssa-rt serve --api-keys FILE`` accepts.

``add`` prints the new key once (stdout) and stores only its salted hash; a running server picks
up every change on its next request. The file is replaced atomically and kept at mode 0600.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from ..serve import keys as api_keys
from .console import fail_cleanly

FILE = click.option("--file", "path", required=True, type=click.Path(path_type=Path, dir_okay=False),
                    metavar="KEYS", help="The API keys file (created by `add` if missing; give the same to serve --api-keys).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def _public(record: api_keys.KeyRecord) -> dict:
    """What may be shown of a record: never the salt or hash (no use to anyone but a guesser)."""
    doc = asdict(record)
    return {k: doc[k] for k in ("id", "principal", "created")}


@click.group("api-key")
def api_key() -> None:
    """Issue, list and revoke the API keys of `dcssa-rt serve --api-keys KEYS`."""


@api_key.command("add")
@click.argument("name")
@FILE
@JSON
def add(name: str, path: Path, as_json: bool) -> None:
    """Issue a new key for the principal NAME; it is printed once, only its hash is stored."""
    with fail_cleanly():
        record, key = api_keys.add_key(path, name)
    if as_json:
        click.echo(json.dumps({**_public(record), "key": key}))
        return
    click.echo(key)
    click.echo(f"key {record.id} for {record.principal} added to {path}; it is shown only now: send it as "
               "'Authorization: Bearer KEY'", err=True)


@api_key.command("list")
@FILE
@JSON
def list_keys(path: Path, as_json: bool) -> None:
    """The keys of the file: id, principal, date (never the keys: they are not stored)."""
    with fail_cleanly():
        records = api_keys.read_keys(path)
    if as_json:
        click.echo(json.dumps([_public(r) for r in records]))
        return
    for r in records:
        click.echo(f"{r.id}  {r.principal:24s}  {r.created}")
    if not records:
        click.echo(f"no keys in {path}", err=True)


@api_key.command("revoke")
@click.argument("which", metavar="ID|NAME")
@FILE
@JSON
def revoke(which: str, path: Path, as_json: bool) -> None:
    """Revoke the key with this id, or every key of the principal NAME; servers refuse it at once."""
    with fail_cleanly():
        gone = api_keys.revoke(path, which)
    if as_json:
        click.echo(json.dumps([_public(r) for r in gone]))
        return
    for r in gone:
        click.echo(f"revoked {r.id} ({r.principal})")

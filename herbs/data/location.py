"""Where shards live: `data.shards` as a local directory or a URL, and the address of each file there.

    shards/cub200                             a local directory (seekable: samples are skipped by their headers)
    file:///data/shards/cub200                the same, as a URL
    https://host/shards/cub200                a web server's directory
    pipe:aws s3 cp s3://b/cub200/{name} -     a shell command that writes the file `{name}` to stdout
    s3://b/cub200, gs://b/cub200              object stores, through their CLI (aws, gsutil) or fsspec (s3fs, gcsfs)
    ais://..., hf://..., memory://...         any other scheme webdataset's gopen or fsspec knows

`manifest.json` is read from the same location as the shards. Parsing is cheap and checks only
what can be known without the network: the scheme, the `{name}` of a template, a client to use.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from herbs.errors import DataError

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
NAME = "{name}"
EXAMPLES = "a local directory, https://host/shards, pipe:curl -s https://host/shards/{name}, s3://bucket/shards or gs://bucket/shards"
# Object stores: the command line client herbs streams through, else the fsspec backend (pip package).
STORES = {"s3": ("aws", "s3fs"), "gs": ("gsutil", "gcsfs")}


@dataclass(frozen=True)
class Location:
    text: str  # as the user wrote it
    scheme: str  # "" for a local directory, "pipe" for a command template, else the URL scheme

    @property
    def local(self) -> bool:
        return self.scheme == ""

    @property
    def path(self) -> Path:
        """The local directory (local locations only)."""
        return Path(self.text[len("file://"):] if self.text.startswith("file://") else self.text)

    @property
    def name(self) -> str:
        """The last folder of the location (`shards/cub200`, `https://host/cub200/`, `pipe:cat /x/cub200/{name}`: cub200)."""
        if self.local:
            return self.path.resolve().name
        text = self.text.split(NAME)[0] if self.scheme == "pipe" else self.text
        return text.rstrip("/ ").rsplit("/", 1)[-1].split(" ")[-1] or self.text

    @property
    def absolute(self) -> str:
        """The location as written, a local folder as its absolute path."""
        return str(self.path.resolve()) if self.local else self.text

    def __truediv__(self, name: str):
        """The file `name` here: a Path for a local directory, else the URL (or command) that opens it."""
        if self.local:
            return self.path / name
        if self.scheme == "pipe":
            return self.text.replace(NAME, name)
        return self.text.rstrip("/") + "/" + name

    def __str__(self) -> str:
        return self.text

    def __fspath__(self) -> str:
        # Lets a local location be passed wherever a path is taken (Path(location), open(...)).
        if not self.local:
            raise TypeError(f"{self.text} is not a local path")
        return str(self.path)


def locate(shards: "str | Path | Location") -> Location:
    """`data.shards` as a Location, or one sentence on why herbs cannot read from it."""
    if isinstance(shards, Location):
        return shards
    text = str(shards)
    listed = re.search(r"\{[^{}/]*(\.\.|,)[^{}/]*\}", text) if not text.startswith("pipe:") else None  # brace expansion
    if listed:  # as webdataset's shard lists are written: herbs finds the shards through their manifest
        parent = text[:listed.start()].rsplit("/", 1)[0] if "/" in text[:listed.start()] else "."
        raise DataError(f"data location '{text}' names shards one by one; pass the location that holds them and their manifest.json: "
                        f"'{parent}'")
    if text.startswith("pipe:"):
        if NAME not in text:
            raise DataError(f"data location '{text}' is a pipe: command without {NAME}, where herbs puts each file's name "
                            f"(manifest.json, train-000000.tar, ...); write it as e.g. 'pipe:curl -s https://host/shards/{NAME}' "
                            f"to read, or 'pipe:aws s3 cp - s3://bucket/shards/{NAME}' to write")
        return Location(text, "pipe")
    match = URL.match(text)
    if not match:
        typo = re.match(r"^([A-Za-z][A-Za-z0-9]+):/?(?!/)", text)  # s3:/bucket, https:host: read or written as a local folder
        if typo and typo.group(1).lower() in {"file", "http", "https", *STORES}:
            raise DataError(f"data location '{text}' looks like a {typo.group(1)}:// URL with a slash missing; "
                            f"write it as '{typo.group(1)}://{text[typo.end():]}'")
        return Location(text, "")
    scheme = match.group(1).lower()
    if scheme == "file":
        return Location(text, "")
    if scheme in ("http", "https"):
        if shutil.which("curl") is None:
            raise DataError(f"data location '{text}' is read with curl (as webdataset does), which is not on PATH; install curl")
        return Location(text, scheme)
    if scheme in STORES:
        client, package = STORES[scheme]
        if shutil.which(client) is None and not fsspec_knows(scheme):
            raise DataError(f"data location '{text}' needs the {client} command on PATH or the {package} package "
                            f"(`pip install {package}`); install one, or use 'pipe:<your client's copy-to-stdout command with {NAME}>'")
        return Location(text, scheme)
    if scheme in gopen_schemes() or fsspec_knows(scheme):
        return Location(text, scheme)
    raise DataError(f"data location '{text}' has the URL scheme '{scheme}://', which neither webdataset nor fsspec can open; "
                    f"use {EXAMPLES}")


def gopen_schemes() -> set[str]:
    # Imported here: webdataset imports torch (seconds), which local locations never need.
    from webdataset.gopen import gopen_schemes as schemes

    return set(schemes) - {"__default__"}


def fsspec_knows(scheme: str) -> bool:
    """Whether fsspec is installed and has a usable backend (its package installed) for `scheme`."""
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
        return True
    except (ImportError, ValueError):
        return False

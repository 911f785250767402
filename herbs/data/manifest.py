"""`manifest.json`: what a shards directory holds. The writer writes it last; loaders read
epoch lengths, classes and shard names from it and never list or open tars to find out.

    {"format": 1, "dataset": "cub",
     "classes": [{"name": "Black_footed_Albatross", "id": "1"}, ...],
     "hierarchy": [{"name": "Albatross", "classes": [0, 1, 2]}, ...],
     "tree": {"<id>": {"name": ..., "parent": "<id>" | null}, ...},      (NABirds only)
     "splits": {"train": {"num_samples": 5994, "shards": [{"name": "train-000000.tar",
                "num_samples": 1052, "bytes": ..., "sha256": ..., "index": "train-000000.idx"}, ...]}, ...},
     "notes": {"seed": 0, "val_fraction": 0.0, "reencoded_as_png": 0, "unreadable": []}}
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from herbs.errors import DataError
from herbs.data.fetch import FetchPolicy, Unworkable, fetched, read_url
from herbs.data.location import Location, locate
from herbs.data.source import ClassGroup
from herbs.data.tario import DamagedShard, ShardInfo, parse_index, sample_starts, sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
# What a remote output's manifest.json holds while its shards are written (herbs.data.upload): a
# location that cannot be listed or deleted from is written over, and must not look complete meanwhile.
BEING_WRITTEN = "being written"
RESHARD = "write the shards again with `herbs shard ...`"


@dataclass(frozen=True)
class SplitInfo:
    name: str
    shards: tuple[ShardInfo, ...]

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """Samples per shard, in file order (what every epoch plan starts from, kept once per process)."""
        return np.fromiter((shard.num_samples for shard in self.shards), dtype=np.int64, count=len(self.shards))

    @property
    def num_samples(self) -> int:
        return int(self.sizes.sum())


@dataclass
class Manifest:
    root: Location  # where the shards are (a Path or str given here is parsed as `data.shards` is)
    dataset: str  # cub | nabirds | folder | demo
    class_names: list[str]
    original_ids: list[str]  # the dataset's own id of each class index
    hierarchy: list[ClassGroup]  # class groups for group-level metrics; may be empty
    splits: dict[str, SplitInfo]
    tree: dict[str, tuple[str, Optional[str]]] = field(default_factory=dict)  # id -> (name, parent id)
    notes: dict = field(default_factory=dict)  # how the shards were written

    def __post_init__(self):
        self.root = locate(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataError(
                f"split '{name}' is not in {self.root / MANIFEST} (it has {', '.join(sorted(self.splits))}); "
                "choose one of those, or write a val split with `herbs shard ... --val-fraction 0.1`"
            )
        if not self.splits[name].num_samples:  # herbs shard leaves an empty split out: an edited manifest
            raise DataError(f"split '{name}' of {self.root / MANIFEST} lists no samples; choose another split, or {RESHARD}")
        return self.splits[name]

    def path(self, shard: ShardInfo) -> "Path | str":
        """The shard's local path, or its URL (command) for a remote location."""
        return self.root / shard.name

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "dataset": self.dataset,
            "classes": [{"name": n, "id": i} for n, i in zip(self.class_names, self.original_ids)],
            "hierarchy": [{"name": g.name, "classes": list(g.classes)} for g in self.hierarchy],
            "tree": {node: {"name": name, "parent": parent} for node, (name, parent) in self.tree.items()},
            "splits": {
                s.name: {"num_samples": s.num_samples, "shards": [vars(shard) for shard in s.shards]}
                for s in self.splits.values()
            },
            "notes": self.notes,
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def parsed(cls, root: Location, text: str) -> "Manifest":
        """`from_json`, with anything unreadable said as one sentence."""
        try:
            return cls.from_json(root, text)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{root / MANIFEST} is not a readable herbs manifest ({err.__class__.__name__}: {err}); {RESHARD}") from None

    @classmethod
    def from_json(cls, root: Location, text: str) -> "Manifest":
        data = json.loads(text)
        if not isinstance(data, dict):
            kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(data), "null")
            raise DataError(f"{root / MANIFEST} holds a JSON {kind}, not the object herbs writes; {RESHARD}")
        if data.get("format") == BEING_WRITTEN:
            raise DataError(f"{root / MANIFEST} belongs to shards that are being written, or whose writing was interrupted; "
                            "wait for herbs shard to finish, or run it again")
        if data.get("format") != FORMAT:
            raise DataError(f"{root / MANIFEST} has format {data.get('format')!r}, this herbs reads format {FORMAT}; {RESHARD}")
        return cls(
            root=root,
            dataset=data["dataset"],
            class_names=[c["name"] for c in data["classes"]],
            original_ids=[c["id"] for c in data["classes"]],
            hierarchy=[ClassGroup(g["name"], tuple(g["classes"])) for g in data["hierarchy"]],
            splits={
                name: SplitInfo(name, tuple(checked_shard(shard) for shard in s["shards"]))
                for name, s in data["splits"].items()
            },
            tree={node: (t["name"], t["parent"]) for node, t in data["tree"].items()},
            notes=data["notes"],
        )


SHARD_FIELDS = {"name": str, "num_samples": int, "bytes": int, "sha256": str, "index": (str, type(None))}


def checked_shard(fields: dict) -> ShardInfo:
    """One shard of a manifest, its fields' types checked: a damaged one is a sentence here, not a traceback in verify."""
    shard = ShardInfo(**fields)
    wrong = [name for name, kind in SHARD_FIELDS.items() if not isinstance(getattr(shard, name), kind)]
    if wrong:
        raise ValueError(f"shard field '{wrong[0]}' is {getattr(shard, wrong[0])!r}")
    return shard


def read_manifest(shards: "str | Path | Location", fetch: FetchPolicy = FetchPolicy()) -> Manifest:
    """The manifest at `shards` as written, or one sentence on why there is none to read."""
    root = locate(shards)
    if not root.local and root.text.rstrip("/").endswith("/" + MANIFEST):
        raise DataError(f"data location '{root}' names the manifest itself; pass the location that holds it: "
                        f"'{root.text.rstrip('/')[:-len(MANIFEST) - 1]}'")
    if not root.local:
        return Manifest.parsed(root, fetch_manifest(root, fetch))
    directory, path = root.path, root / MANIFEST
    if directory.is_file():
        raise DataError(f"'{root}' is a file; pass the shards directory that holds {MANIFEST}")
    if not path.is_file():
        reason = "does not exist" if not directory.is_dir() else f"has no {MANIFEST} (never written, or the writing was interrupted)"
        raise DataError(f"shards directory '{root}' {reason}; {RESHARD} (e.g. `herbs shard demo {root}`)")
    return Manifest.parsed(root, path.read_bytes().decode("utf-8", "replace"))  # not UTF-8: unreadable JSON, said as such


def fetch_manifest(root: Location, fetch: FetchPolicy) -> str:
    url = root / MANIFEST
    fix = "point data.shards at the location that holds the shards and their manifest.json"
    try:
        data = read_url(root, MANIFEST, fetch)
    except FileNotFoundError as err:
        raise DataError(f"manifest {url} does not exist ({err}); {fix}") from None
    except Unworkable as err:
        raise DataError(f"manifest {url} cannot be read ({err}); check the command or URL in data.shards") from None
    except OSError as err:
        raise DataError(f"manifest {url} could not be read in {fetch.retries + 1} attempts ({err}); check that the server "
                        f"or command works and the location is right, or raise data.timeout ({fetch.timeout:g} s) or data.retries") from None
    text = data.decode("utf-8", "replace")
    if text.lstrip()[:1] == "<":
        raise DataError(f"manifest {url} is an HTML page, not the JSON herbs writes; {fix}")
    if not text.strip():
        raise DataError(f"manifest {url} is empty; {fix}")
    return text


def load_manifest(shards: "str | Path | Location", *, verify: bool = False, fetch: FetchPolicy = FetchPolicy()) -> Manifest:
    """The manifest at `shards`. For a local directory every listed shard is checked to exist (and,
    with `verify`, checked against its sample count and sha256: a full read of the shards); remote
    shards are checked as they are fetched (`FetchPolicy.verify`), never read twice."""
    manifest = read_manifest(shards, fetch)
    if not manifest.root.local:
        return manifest
    path = manifest.root / MANIFEST
    missing = [shard.name for s in manifest.splits.values() for shard in s.shards if not manifest.path(shard).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"shard '{manifest.root / missing[0]}'{more} listed in {path} is missing; copy it back or {RESHARD}")
    if verify:
        check_shards(manifest)
    return manifest


def shard_problem(manifest: Manifest, shard: ShardInfo) -> Optional[str]:
    path = manifest.path(shard)
    size = path.stat().st_size
    if size != shard.bytes:
        return f"shard '{path}' has {size} bytes but the manifest lists {shard.bytes}"
    digest = sha256_file(path)
    if digest != shard.sha256:
        return f"shard '{path}' has sha256 {digest[:12]}... but the manifest lists {shard.sha256[:12]}..."
    try:
        starts = sample_starts(path)
    except DamagedShard as err:
        return f"shard '{path}' is not a whole tar ({err})"
    if len(starts) != shard.num_samples:
        return f"shard '{path}' holds {len(starts)} samples but the manifest lists {shard.num_samples}"
    if shard.index:
        index = manifest.root / shard.index
        if not index.is_file() or parse_index(index.read_bytes(), shard) != starts:
            return f"sample index '{index}' is missing or does not match its shard"
    return None


def check_shards(manifest: Manifest) -> None:
    problems = [p for s in manifest.splits.values() for shard in s.shards if (p := shard_problem(manifest, shard))]
    if problems:
        more = f" (and {len(problems) - 1} more shards fail)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; the shards were damaged or changed after writing: {RESHARD}")


def verify_shards(shards: "str | Path | Location", fetch: FetchPolicy = FetchPolicy()) -> Manifest:
    """Check every shard's size, sha256 and sample count against the manifest; one sentence if any fails.
    Remote shards are fetched whole, each once."""
    manifest = load_manifest(shards, verify=True, fetch=fetch)
    if not manifest.root.local:
        problems = [shard.name for s in manifest.splits.values() for shard in s.shards if not fetched_ok(manifest, shard, fetch)]
        if problems:
            more = f" (and {len(problems) - 1} more shards)" if len(problems) > 1 else ""
            raise DataError(f"shard {manifest.root / problems[0]}{more} could not be read whole or does not match {manifest.root / MANIFEST} "
                            f"(the warnings above say why); {RESHARD}")
    return manifest


def fetched_ok(manifest: Manifest, shard: ShardInfo, fetch: FetchPolicy) -> bool:
    path, keep = fetched(manifest.root, shard, fetch)
    if path is None:
        return False
    try:
        return len(sample_starts(path)) == shard.num_samples
    except DamagedShard:
        return False
    finally:
        if not keep:
            path.unlink(missing_ok=True)

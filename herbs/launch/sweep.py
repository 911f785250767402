"""Sweep files: config values per key, expanded into points (one job each), named after their values.

A sweep file is YAML with two optional sections:

    grid:                      # every combination of these values
      optim.lr: [0.01, 0.001]
      train.seed: [0, 1]
    zip:                       # lists of one length, taken position by position
      optim.lr: [0.01, 0.001]
      optim.warmup_steps: [100, 500]

`zip` may also be a list of such mappings: each is zipped on its own and the groups are
crossed with each other and with the grid. Keys are the `section.key` names of the config;
values are what the YAML file says (numbers, strings, lists), passed on as overrides that
the training engine parses back to exactly those values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herbs.config import read_yaml, text_as_written
from herbs.errors import LaunchError


@dataclass
class Point:
    """One job of a sweep: the swept values (dotted key -> value) and the job's name."""

    values: dict[str, Any]
    name: str = ""
    extra: list[str] = field(default_factory=list)  # overrides added by the launcher (log.name)

    def overrides(self) -> list[str]:
        return [override(k, v) for k, v in self.values.items()] + list(self.extra)


def yaml_text(value: Any) -> str:
    """The one-line YAML text that parses back to `value` (what `section.key=<text>` must carry)."""
    if isinstance(value, str):  # plain strings stay readable (spaces and quotes are fine); a JSON string is YAML too
        text = value if reads_back(value, value) else json.dumps(value, ensure_ascii=False)
    else:  # dumped inside a list: a lone scalar would end in YAML's document marker '...'
        text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()[1:-1]
    if "\n" in text or not reads_back(text, value):
        raise LaunchError(f"sweep value {value!r} cannot be passed as a one-line override; use a simpler value")
    return text


def reads_back(text: str, value: Any) -> bool:
    try:
        return yaml.safe_load(text) == value
    except yaml.YAMLError:
        return False


def override(key: str, value: Any) -> str:
    return f"{key}={yaml_text(value)}"


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file: {'grid': {key: [values]}, 'zip': [{key: [values]}, ...]}. It reads as a
    config file does: a key given twice is refused, and a key that holds text takes its values as written."""
    data, written = read_yaml(path, what="sweep file", error=LaunchError, missing="pass a YAML file", fix="pass a YAML file")
    sweep = parse_sweep(data, f"sweep file '{path}'")
    for group, raw in [(data.get("grid"), written.get("grid")), *zip(as_list(data.get("zip")), as_list(written.get("zip")))]:
        for key, values in (group or {}).items():  # the lists `sweep` holds
            texts = raw.get(key) if isinstance(raw, dict) and isinstance(raw.get(key), list) else []
            values[:] = [text_as_written(value, text, key) for value, text in itertools.zip_longest(values, texts)][:len(values)]
    return sweep


def as_list(zips: Any) -> list:
    """A sweep's zip section as a list of groups (one mapping is one group)."""
    return zips if isinstance(zips, list) else [zips]


def count(sweep: dict) -> int:
    """How many points `expand` would make, without making them."""
    return math.prod(len(values) for values in sweep["grid"].values()) * math.prod(len(next(iter(g.values()))) for g in sweep["zip"])


def parse_sweep(data: Any, source: str = "the sweep") -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LaunchError(f"{source} must be a mapping with 'grid' and/or 'zip' sections")
    unknown = sorted(set(data) - {"grid", "zip"})
    if unknown:
        raise LaunchError(f"{source} has an unknown section '{unknown[0]}'; use 'grid' (all combinations) or 'zip' (lists taken together)")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise LaunchError(f"'grid' in {source} must map config keys to lists of values")
    zips = data.get("zip") or []
    if isinstance(zips, dict):
        zips = [zips]
    if not isinstance(zips, list) or not all(isinstance(z, dict) for z in zips):
        raise LaunchError(f"'zip' in {source} must be a mapping of config keys to lists (or a list of such mappings)")
    seen: set[str] = set()
    for where, group in [("grid", grid)] + [("zip", z) for z in zips]:
        for key, values in group.items():
            if not isinstance(key, str) or key.count(".") != 1:
                raise LaunchError(f"sweep key {key!r} under '{where}' must be a config key of the form section.key (e.g. optim.lr)")
            if not isinstance(values, list) or not values:
                raise LaunchError(f"sweep key '{key}' under '{where}' must map to a non-empty list of values, e.g. {key}: [a, b]")
            if key in seen:
                raise LaunchError(f"sweep key '{key}' appears twice in {source}; list it once")
            seen.add(key)
    for group in zips:
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise LaunchError(f"the lists under 'zip' in {source} must have one length ({detail})")
    if not seen:
        raise LaunchError(f"{source} expands to no jobs; give at least one key with values under 'grid' or 'zip'")
    return {"grid": grid, "zip": [z for z in zips if z]}


def expand(sweep: dict) -> list[Point]:
    """All points: the grid's product crossed with each zipped group's positions, in file order."""
    axes = [[{key: v} for v in values] for key, values in sweep["grid"].items()]
    axes += [[dict(zip(group, row)) for row in zip(*group.values())] for group in sweep["zip"]]
    points = [Point({key: v for part in combo for key, v in part.items()}) for combo in itertools.product(*axes)]
    seen: set[str] = set()
    for point in points:  # two jobs training the same thing, each in its own run directory
        text = " ".join(point.overrides())
        if text in seen:
            raise LaunchError(f"the sweep gives {text} twice; list each value once")
        seen.add(text)
    return points


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else yaml_text(value)
    text = re.sub(r"[^A-Za-z0-9._+]+", "-", text).strip("-.")
    return text or "empty"


def name_points(points: list[Point]) -> list[Point]:
    """Name each point after its values (`lr-0.01_seed-1`); short key names unless they clash."""
    keys = list(dict.fromkeys(k for p in points for k in p.values))
    last = [k.split(".", 1)[1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    names = []
    for p in points:
        name = "_".join(f"{short[k]}-{_slug(v)}" for k, v in p.values.items()) or "run"
        if len(name) > 80:  # keep directory and job names manageable, still unique
            name = name[:70] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        names.append(name)
    taken = {name for name in names if names.count(name) == 1}
    for i, p in enumerate(points):
        p.name = names[i]
        if names.count(p.name) > 1:  # several points, one name: number them, past any name a point has already
            while p.name in taken or p.name == names[i]:
                p.name = f"{p.name}-{i}"
            taken.add(p.name)
    return points

#!/usr/bin/env python
"""Regenerate the reference fixture by running the original HERBS code, or check the committed one.

    python tools/make_reference_fixture.py ORIGINAL_CHECKOUT OUT            # write a fixture to OUT
    python tools/make_reference_fixture.py ORIGINAL_CHECKOUT FIXTURE --check  # compare with FIXTURE

ORIGINAL_CHECKOUT is a checkout of github.com/chou141253/FGVC-HERBS at f3deb47 (its eval.py needs
pandas, scikit-learn and matplotlib). The original's code runs in its own process
(tools/original_reference_run.py) with the checkout first on sys.path, so it uses its vendored
timm 0.4.12; the recipe (sizes, seeds, steps) is the committed fixture's config.yaml. Its files
are then compacted as tools/compact_reference_fixture.py does. --check writes nothing: it prints
the largest difference of every stored number and exits 1 when one exceeds the tolerances.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the fixture reader lives with the tests
from compact_reference_fixture import compact  # noqa: E402
from helpers.reference import DEFAULT_DIR, load_reference  # noqa: E402


def run_original(checkout: Path, recipe: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run([sys.executable, str(HERE / "original_reference_run.py"), str(checkout), str(recipe), str(out)],
                   cwd=checkout, env=env, check=True)


def differences(new, old) -> dict[str, tuple[float, float]]:
    """(largest absolute difference, largest relative difference) for every group of numbers."""
    def tensors(a: dict, b: dict) -> tuple[float, float]:
        assert set(a) == set(b), f"names differ: {sorted(set(a) ^ set(b))}"
        worst = (0.0, 0.0)
        for key in a:
            x, y = a[key].double(), b[key].double()
            diff = (x - y).abs()
            worst = max(worst[0], diff.max().item() if diff.numel() else 0.0), \
                max(worst[1], (diff / y.abs().clamp_min(1e-12)).max().item() if diff.numel() else 0.0)
        return worst

    def scalars(a: dict, b: dict) -> tuple[float, float]:
        return tensors({k: torch.tensor(v) for k, v in a.items()}, {k: torch.tensor(v) for k, v in b.items()})

    result = {
        "weights": tensors(new.weights, old.weights),
        "input": tensors({"images": new.images, "labels": new.labels}, {"images": old.images, "labels": old.labels}),
        "outputs_eval": tensors(new.outputs_eval, old.outputs_eval),
        "eval_metrics": scalars(new.eval_metrics["accs"], old.eval_metrics["accs"]),
        "pre_steps_losses": scalars(dict(enumerate(new.expected["pre_steps_losses_div_update_freq"])),
                                    dict(enumerate(old.expected["pre_steps_losses_div_update_freq"]))),
    }
    for epoch in old.expected["loss_terms"]:
        result[f"loss_terms/{epoch}"] = scalars(new.expected["loss_terms"][epoch], old.expected["loss_terms"][epoch])
        result[f"grad_norm/{epoch}"] = scalars(new.expected["grad_norm"][epoch], old.expected["grad_norm"][epoch])
    return result


def check(new_dir: Path, fixture: Path, atol: float, rtol: float) -> bool:
    new, old = load_reference(new_dir), load_reference(fixture)
    ok = new.expected["outputs_eval_order"] == old.expected["outputs_eval_order"] \
        and new.expected["params_without_grad"] == old.expected["params_without_grad"] \
        and new.expected["disabled_modules"] == old.expected["disabled_modules"]
    print(f"output order, parameters without gradient, disabled modules: {'same' if ok else 'DIFFERENT'}")
    for name, (absolute, relative) in differences(new, old).items():
        good = absolute <= atol or relative <= rtol
        ok &= good
        print(f"{name:22s} max |diff| {absolute:.3g}  max rel {relative:.3g}  {'ok' if good else 'BEYOND TOLERANCE'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="checkout of chou141253/FGVC-HERBS at f3deb47")
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT_DIR,
                        help=f"fixture directory to write, or with --check to compare with (default {DEFAULT_DIR})")
    parser.add_argument("--check", action="store_true", help="compare with OUT instead of writing it")
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance of --check (default 1e-6)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of --check (default 1e-5)")
    args = parser.parse_args()
    if not (args.checkout / "models" / "pim_module").is_dir() or not (args.checkout / "timm").is_dir():
        parser.error(f"{args.checkout} is not a checkout of FGVC-HERBS (no models/pim_module or timm/)")
    recipe = ((args.out if args.check else DEFAULT_DIR) / "config.yaml").resolve()  # the original runs in its checkout
    with tempfile.TemporaryDirectory() as tmp:
        raw, compacted = Path(tmp) / "original", Path(tmp) / "compact"
        run_original(args.checkout.resolve(), recipe, raw)
        if not args.check:
            compact(raw, args.out)
            print(f"wrote {args.out}")
            return 0
        compact(raw, compacted)
        return 0 if check(compacted, args.out, args.atol, args.rtol) else 1


if __name__ == "__main__":
    sys.exit(main())

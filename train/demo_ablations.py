"""python -m train.demo_ablations [--work WORK] [--out results/toy_ablations] [--seeds 0,1,2]

The poster's ablations at toy scale, on the synthetic world, with the project's real trainers (issue #4, item 4).
It needs a finished ``python -m train.demo`` work folder (its exported pairs, world base checkpoint and IDE-Net) and
trains, each from the same starting point and for the same (short) number of steps:

* IDE-Net identity loss: none | ``L_cid`` (constant weight) | ``L_aid`` (annealing), each from the world's base;
* IPNet objectives, each distilled from the demo run's IDE-Net: ``L_adv`` alone, ``+L_distill``, ``+L_sds``,
  ``+L_triplet``, ``+L_id`` (all five), and the all-five student with a DDIM-inversion teacher start instead of the
  stochastic one; then the demo recipe (``L_adv`` + ``L_pair`` + ``L_id``, the shipped IPNet's second-stage config,
  here from the IDE-Net without the ``L_pair`` warm-up) and the recipe with ``L_distill`` added.

Every variant is scored like the shipped models (:func:`train.demo.evaluate`: held-out test identities, demo face
pack identity cosine, demo-CLIP edit presence, L1 to the rendered target, CPU latency), next to the demo run's own
IDE-Net / IPNet 1-step / IPNet 2-step. Writes ``ablations.md`` / ``ablations.csv`` / ``ablations.json`` to ``--out``.
The full recipe's student is also scored with 2 steps (the poster's "1 vs 2 steps"), and one row distils in pixel
space (``distill_space: pixel``, "latent vs pixel").

``--seeds 0,1,2`` trains every variant once per seed and adds ``ablations_seeds.{md,json}``: per variant, each
metric's mean over the seeds with a t-interval over them, and its paired difference to its group's full recipe
(``REFERENCE``: ``L_aid`` for IDE-Net; all five terms from the DDIM-inversion start for IPNet): per held-out pair,
the variant minus the reference trained with the same seed, averaged over seeds, with a bootstrap interval that
resamples people. Variants are trained in ``<work>/ablations/<name>`` and reused when a later run has the same
settings, so an interrupted run continues where it stopped. Deterministic given the demo run's seed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from train.config import IDENetConfig, IPNetConfig, config_to_dict, load_config
from train.demo import CONFIG_DIR, DemoScorers, _stage, evaluate, format_eval

# IPNet loss weights per variant. The poster's rows use only the paper's terms (``pair`` 0); the last two rows are the
# demo recipe (``train/configs/demo_ipnet.yaml``: L_adv + L_pair + L_id, no teacher pass) and that recipe with the
# teacher's L_distill added back, so the table shows what the non-paper L_pair term does at this scale.
_PAPER = {"weights.pair": 0.0}
IPNET_VARIANTS: dict[str, dict[str, Any]] = {
    "L_adv": {**_PAPER, "weights.adv": 0.2, "weights.distill": 0.0, "weights.sds": 0.0, "weights.triplet": 0.0,
              "weights.identity": 0.0},
    "+L_distill": {**_PAPER, "weights.adv": 0.2, "weights.distill": 1.0, "weights.sds": 0.0, "weights.triplet": 0.0,
                   "weights.identity": 0.0},
    "+L_sds": {**_PAPER, "weights.adv": 0.2, "weights.distill": 1.0, "weights.sds": 0.1, "weights.triplet": 0.0,
               "weights.identity": 0.0},
    "+L_triplet": {**_PAPER, "weights.adv": 0.2, "weights.distill": 1.0, "weights.sds": 0.1, "weights.triplet": 0.1,
                   "weights.identity": 0.0},
    "+L_id (all five)": {**_PAPER, "weights.adv": 0.2, "weights.distill": 1.0, "weights.sds": 0.1,
                         "weights.triplet": 0.1, "weights.identity": 0.1},
    "all five, DDIM-inversion teacher start": {**_PAPER, "weights.adv": 0.2, "weights.distill": 1.0,
                                               "weights.sds": 0.1, "weights.triplet": 0.1, "weights.identity": 0.1,
                                               "teacher_start": "ddim-inversion"},
    "all five, DDIM-inversion teacher start, pixel-space L_distill": {
        **_PAPER, "weights.adv": 0.2, "weights.distill": 1.0, "weights.sds": 0.1, "weights.triplet": 0.1,
        "weights.identity": 0.1, "teacher_start": "ddim-inversion", "distill_space": "pixel"},
    "demo recipe: L_adv + L_pair + L_id": {},
    "demo recipe + L_distill": {"weights.distill": 1.0},
}
IDENET_VARIANTS: dict[str, str] = {"no identity loss": "none", "L_cid": "constant", "L_aid": "annealing"}
# each group's full recipe: the row every other row of the group is compared with, pair by pair (--seeds)
REFERENCE = {"IDE-Net identity loss": "IDE-Net, L_aid",
             "IPNet objectives": "IPNet 1-step, all five, DDIM-inversion teacher start"}
TWO_STEP_ROW = "IPNet 2-step, all five, DDIM-inversion teacher start"  # the reference student, 2 steps at inference
SEED_METRICS = ("l1", "identity", "edit_present")
COLUMNS = ("group", "variant", "steps", "nfe", "l1_to_target", "identity", "face_missing", "edit_present", "clip_t",
           "latency_s_64px")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _done(work: Path, stage: str) -> dict[str, Any]:
    marker = work / f"{stage}.done.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} is missing: run `python -m train.demo --work {work}` first (the ablations "
                                "start from its exported pairs, world base checkpoint and IDE-Net)")
    return json.loads(marker.read_text())


def _demo_identity_model(work: Path) -> str | None:
    """The identity model of the demo run's IDE-Net (its saved config, once it finished; before that the demo face
    pack's recognition ONNX, which ``train.demo`` uses when present), or None when there is none."""
    from instantportrait.config import DEMO_FACE_PACK
    from train.demo import find_recognition_onnx

    marker = work / "idenet.done.json"
    if marker.is_file():
        path = load_config(IDENetConfig, Path(json.loads(marker.read_text())["path"]) / "train_config.yaml"
                           ).identity_model
        return None if path in (None, "", "none") else path
    found = find_recognition_onnx(DEMO_FACE_PACK)
    return str(found) if found else None


def seeded(name: str, seed: int, world_seed: int) -> str:
    """A variant's row (or stage) name for one training seed: the bare name for the world's seed (so runs from
    before seeds existed are reused), ``name [seed s]`` otherwise."""
    return name if seed == world_seed else f"{name} [seed {seed}]"


def run_ablations(work: Path, out: Path, *, idenet_steps: int = 500, ipnet_steps: int = 150, eval_pairs: int = 100,
                  only: str | None = None, train_only: bool = False,
                  seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Train every variant (or reuse it) once per training seed (default: the world's seed only), evaluate all of
    them together, write the tables; returns the rows (``train_only``: stop after training, return nothing). With
    more than one seed, also ``ablations_seeds.{md,json}`` (:func:`seed_summary`)."""
    from train import train_idenet, train_ipnet

    work, out = Path(work), Path(out)
    base = Path(_done(work, "base")["path"])
    data = Path(_done(work, "data")["path"])
    world = _done(work, "data")["key"]
    scratch = work / "ablations"
    scratch.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    editors, steps, demo_idenet = _demo_run_editors(work, only)
    groups: dict[str, str] = {row: "demo run" for row in editors}
    rec = _demo_identity_model(work)
    base_key = _done(work, "base")["key"]
    seeds = list(seeds) if seeds else [world["seed"]]
    variants: dict[str, list[str]] = {}  # variant -> its rows, one per seed

    if only in (None, "idenet"):
        for (name, weighting), seed in itertools.product(IDENET_VARIANTS.items(), seeds):
            if weighting != "none" and rec is None:
                continue
            stage = seeded(f"idenet_{_slug(name)}", seed, world["seed"])
            over = {"model": str(base), "dataset": str(data), "output_dir": str(scratch / stage),
                    "seed": seed, "resolution": world["image_size"], "max_train_steps": idenet_steps,
                    "identity_weighting": weighting, "identity_model": rec if weighting != "none" else "none"}
            cfg = load_config(IDENetConfig, CONFIG_DIR / "demo_idenet.yaml", over)
            path = _stage(scratch, stage, {"base": base_key, "cfg": config_to_dict(cfg)},
                          lambda cfg=cfg: train_idenet.train(cfg), times)
            row = seeded(f"IDE-Net, {name}", seed, world["seed"])
            editors[row], groups[row], steps[row] = ("idenet", path), "IDE-Net identity loss", idenet_steps
            variants.setdefault(f"IDE-Net, {name}", []).append(row)
    if only in (None, "ipnet"):
        for (name, weights), seed in itertools.product(IPNET_VARIANTS.items(), seeds):
            stage = seeded(f"ipnet_{_slug(name)}", seed, world["seed"])
            over = {"model": str(demo_idenet), "dataset": str(data), "output_dir": str(scratch / stage),
                    "seed": seed, "resolution": world["image_size"], "max_train_steps": ipnet_steps,
                    "identity_model": rec or "none", **weights}
            if not rec:
                over["weights.identity"] = 0.0
            cfg = load_config(IPNetConfig, CONFIG_DIR / "demo_ipnet.yaml", over)
            path = _stage(scratch, stage, {"teacher": _done(work, "idenet")["key"], "cfg": config_to_dict(cfg)},
                          lambda cfg=cfg: train_ipnet.train(cfg), times)
            rows = [(f"IPNet 1-step, {name}", "ipnet")]
            if f"IPNet 1-step, {name}" == REFERENCE["IPNet objectives"]:  # 1 vs 2 steps: the same student
                rows.append((TWO_STEP_ROW, "ipnet-2step"))
            for label, method in rows:
                row = seeded(label, seed, world["seed"])
                editors[row], groups[row], steps[row] = (method, path), "IPNet objectives", ipnet_steps
                variants.setdefault(label, []).append(row)

    if train_only:
        return []
    res = evaluate(work, seed=world["seed"], num_identities=world["num_identities"], n=eval_pairs,
                   size=world["image_size"], scorers=DemoScorers.load(), editors=editors)
    parts = []
    if only in (None, "idenet"):
        parts.append(f"IDE-Net variants: {idenet_steps} steps each from the world's base.")
    if only in (None, "ipnet"):
        parts.append(f"IPNet variants: {ipnet_steps} steps each, distilled from the demo run's IDE-Net.")
    flags = (f" --only {only}" if only else "") + (f" --seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else "")
    header = (f"# Toy ablations on the synthetic world\n\n{' '.join(parts)} Made by "
              f"`python -m train.demo_ablations --work {work}{flags}`.\n\n")
    rows = _write_tables(out, res, groups, steps, times, header)
    if len(seeds) > 1:
        summary = seed_summary(res, variants, {v: groups[rs[0]] for v, rs in variants.items()})
        (out / "ablations_seeds.json").write_text(json.dumps(summary, indent=1) + "\n")
        table = format_seed_summary(summary, seeds)
        (out / "ablations_seeds.md").write_text(header + table + "\n")
        print(table, flush=True)
    return rows


def seed_summary(res: dict[str, Any], variants: dict[str, list[str]], groups: dict[str, str]
                 ) -> dict[str, dict[str, Any]]:
    """Per variant (``variants``: its rows, one per training seed, in seed order): for each of ``SEED_METRICS``, the
    mean over seeds with a Student-t 95 % interval over the seeds' means, and the difference to its group's full recipe
    (``REFERENCE``) pair by pair: per held-out pair, the variant's value minus the reference's for the same training
    seed, averaged over the seeds, with a percentile-bootstrap interval that resamples *people* (the held-out
    portraits of one person are not independent; ``res["people"]``). Missing values (no face found) stay missing."""
    from benchmark.metrics import cluster_bootstrap, mean_ci

    def values(row: str, metric: str) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in res["rows"][row]["per_sample"][metric]])

    out: dict[str, dict[str, Any]] = {}
    for variant, rows in variants.items():
        ref = REFERENCE.get(groups[variant])
        entry: dict[str, Any] = {"group": groups[variant], "seeds": len(rows), "reference": ref}
        for metric in SEED_METRICS:
            per_seed = [float(np.nanmean(values(r, metric))) for r in rows]
            ci = mean_ci(per_seed)
            entry[metric] = {"mean": ci.mean, "lo": ci.lo, "hi": ci.hi, "per_seed": per_seed}
            ref_rows = variants.get(ref, []) if ref and variant != ref else []  # the 2-step row: vs 1 step
            if len(ref_rows) == len(rows):
                with warnings.catch_warnings():  # a pair missing in every seed stays NaN (counted as missing)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    diff = np.nanmean([values(r, metric) - values(b, metric) for r, b in zip(rows, ref_rows)],
                                      axis=0)
                d = cluster_bootstrap(diff, res["people"])
                entry[metric]["diff"] = {"mean": d.mean, "lo": d.lo, "hi": d.hi, "people": d.clusters,
                                         "missing": d.missing}
        out[variant] = entry
    return out


def format_seed_summary(summary: dict[str, dict[str, Any]], seeds: Sequence[int]) -> str:
    """Markdown: each metric as mean [interval over seeds] and the paired difference to the reference
    [interval over people]."""
    def cell(m: dict[str, Any], scale: float) -> str:
        return f"{scale * m['mean']:.3g} [{scale * m['lo']:.3g}, {scale * m['hi']:.3g}]"

    head = ["variant"] + [f"{k} (seeds {','.join(map(str, seeds))})" for k in SEED_METRICS] + [
        f"Δ{k} vs full recipe" for k in SEED_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scales = {"l1": 1.0, "identity": 1.0, "edit_present": 100.0}  # edits in percent
    for variant, e in summary.items():
        cells = [cell(e[k], scales[k]) for k in SEED_METRICS]
        cells += [cell(e[k]["diff"], scales[k]) if "diff" in e[k] else "reference" if variant == e["reference"]
                  else "–" for k in SEED_METRICS]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _demo_run_editors(work: Path, only: str | None
                      ) -> tuple[dict[str, tuple[str, Path]], dict[str, int | str], Path | None]:
    """The demo run's own models as table rows (editors and step counts) and its IDE-Net, the IPNet variants'
    teacher. Needed unless only the IDE-Net variants run; then listed only once finished."""
    editors: dict[str, tuple[str, Path]] = {}
    steps: dict[str, int | str] = {}
    demo_idenet = demo_ipnet = None
    if only != "idenet" or (work / "idenet.done.json").is_file():
        demo_idenet = Path(_done(work, "idenet")["path"])
        editors["IDE-Net (demo run)"] = ("idenet", demo_idenet)
        steps["IDE-Net (demo run)"] = load_config(IDENetConfig, demo_idenet / "train_config.yaml").max_train_steps
    if only != "idenet" or (work / "ipnet.done.json").is_file():
        demo_ipnet = Path(_done(work, "ipnet")["path"])
        n: int | str = load_config(IPNetConfig, demo_ipnet / "train_config.yaml").max_train_steps
        if (work / "ipnet_warmup.done.json").is_file():  # the L_pair warm-up's steps, then the recipe's
            warm = Path(_done(work, "ipnet_warmup")["path"])
            n = f"{load_config(IPNetConfig, warm / 'train_config.yaml').max_train_steps}+{n}"
        for row, method in (("IPNet 1-step (demo run)", "ipnet"), ("IPNet 2-step (demo run)", "ipnet-2step")):
            editors[row], steps[row] = (method, demo_ipnet), n
    return editors, steps, demo_idenet


def _write_tables(out: Path, res: dict[str, Any], groups: dict[str, str], steps: dict[str, int | str],
                  times: dict[str, float], header: str) -> list[dict[str, Any]]:
    """``ablations.csv`` / ``.md`` / ``.json`` from the evaluation; prints the table and returns the CSV rows."""
    rows = []
    for name, m in res["rows"].items():
        rows.append({"group": groups.get(name, "reference"), "variant": name, "steps": steps.get(name, ""),
                     "nfe": m.get("nfe", ""), "l1_to_target": round(m["l1_to_target"]["all"], 4),
                     **{k: round(m[k], 4) for k in ("identity", "face_missing", "edit_present", "clip_t")},
                     "latency_s_64px": round(m["latency_s_64px"], 4) if "latency_s_64px" in m else ""})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "ablations.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = format_eval(res)
    (out / "ablations.md").write_text(header + table + "\n")
    (out / "ablations.json").write_text(json.dumps({"rows": rows, "evaluation": res, "train_seconds": times},
                                                   indent=1) + "\n")
    print(table, flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--work", type=Path, default=Path("instantportrait/demo/models/.demo_work"),
                   help="the work folder of a finished `python -m train.demo` run")
    p.add_argument("--out", type=Path, default=Path("results/toy_ablations"))
    p.add_argument("--idenet-steps", type=int, default=500)
    p.add_argument("--ipnet-steps", type=int, default=150)
    p.add_argument("--eval-pairs", type=int, default=100)
    p.add_argument("--only", choices=("idenet", "ipnet"), default=None, help="one group of variants only")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the variants, evaluate nothing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2: every variant trained once per seed, "
                   "plus ablations_seeds.{md,json} (intervals over seeds, paired differences to each group's full "
                   "recipe bootstrapped over people); default: the demo run's seed only")
    args = p.parse_args(argv)
    for name in ("idenet_steps", "ipnet_steps", "eval_pairs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return run_ablations(args.work, args.out, idenet_steps=args.idenet_steps, ipnet_steps=args.ipnet_steps,
                         eval_pairs=args.eval_pairs, only=args.only, train_only=args.train_only, seeds=seeds)


if __name__ == "__main__":
    main()

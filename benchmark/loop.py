"""The benchmark loop: methods x portraits x instructions x seeds -> one row per edit in ``rows.jsonl``.

For each method: check it is available (missing weights offline -> recorded as ``unavailable`` with the message,
the run goes on), load it (timed separately), run ``--warmup`` untimed edits, then time every edit alone
(``time.perf_counter`` around ``Editor.edit``, ``torch.cuda.synchronize`` before and after on CUDA). Each row is
scored inline (face model(s) + CLIP) unless ``score_later`` is set, in which case the timed loop does nothing but
edit and hand the image to a writer thread, and ``score_pending`` scores the saved images afterwards.

Resume: rows are keyed by (method, image, instruction, seed); a restarted run skips keys already written and
repairs a cut-short last line, so it ends with exactly one row per key.

Offline: a method without ``--model-override`` whose real model is not available here runs on its shipped toy demo
model (``instantportrait/demo/models/<model key>/``, at the demo model's own resolution unless ``--resolution
METHOD=N`` says otherwise; ``demo=False`` / ``--no-demo`` turns this off), labelled "[toy demo model]" everywhere; a
default CLIP that is not available is replaced by the toy demo CLIP, noted in ``run.json`` and the summary. Which
methods ran on demo models is part of the run's fingerprint.

Identity, two independent columns, each row naming its backend (``id_backend``, ``id_backend_dlib``): ``id_sim``
from buffalo_l (ArcFace, the papers' model) on photos, or the toy demo pack on ``demo-world`` images (unless
``--face-pack`` names one), and ``id_sim_dlib`` from dlib. A column whose model is not installed is recorded as
``unavailable`` (rows, ``run.json`` ``scoring.identity``), never filled by the toy pack on photos.

Scale: under ``accelerate launch`` every process takes every N-th sample of each method (by a fixed order, before
skipping done keys, so the split does not depend on what a killed run left), writes ``parts/rows.rank<i>.jsonl``
and a ``done`` marker; rank 0 waits for all markers, merges the parts and writes the tables. Without accelerate
(one process) nothing distributed is initialised.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from benchmark import store
from benchmark.config import BenchmarkConfig, check_fingerprint, check_scoring, is_demo_world_spec
from benchmark.data import (
    DEFAULT_INSTRUCTIONS,
    DEMO_WORLD_SPEC,
    Instruction,
    SourceImage,
    load_images,
    load_instructions,
)
from benchmark.editors import check_methods, load_editor, make_editor, model_source
from benchmark.env import Dist, environment, now, rss_mb, sync
from benchmark.metrics import REFERENCE_METHOD
from benchmark.results import METHODS, ROWS, RUN_FILE, SCORES, read_run, write_run
from instantportrait.eval.scorer import DEFAULT_SOURCE_CAPTION, Scorer, ScoringConfig

logger = logging.getLogger(__name__)

DONE_MARKER = "done.rank{rank}.json"
MERGE_POLL_S = 2.0

MEMORY_NOTE = {
    "cuda": "torch.cuda.max_memory_allocated during the edit (peak reset before each edit) minus what was allocated "
            "before the method was loaded (the scoring models), MiB: the method's weights plus its activations",
    "cpu": "process RSS right after the edit minus RSS before the method was loaded (psutil), MiB: what the "
           "method holds (weights, caches), not a peak",
}
TIMING_NOTE = ("edit_ms: time.perf_counter around Editor.edit (batch 1, the PIL image in and out, so text encoding, "
               "VAE encode/decode and pre/post-processing are included), torch.cuda.synchronize before and after "
               "on CUDA; --warmup edits per method excluded; model loading timed separately (load_s). harness_ms: "
               "the rest of the row's time in the loop (scoring unless --score-later, handing the row to the writer "
               "thread); loop_overhead_share: (loop wall time - sum of edit times) / sum of edit times, including "
               "the writer thread's final drain.")


def sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def instructions_sha256(spec: str | None, instructions: list[Instruction]) -> str:
    """The instruction file's sha256, or (for a built-in set such as ``demo-world``) that of its JSON lines."""
    if spec == DEMO_WORLD_SPEC:
        text = "".join(json.dumps(asdict(ins), sort_keys=True) + "\n" for ins in instructions)
        return hashlib.sha256(text.encode()).hexdigest()
    return sha256_text(Path(spec or DEFAULT_INSTRUCTIONS))


@dataclass(frozen=True)
class Sample:
    image: SourceImage
    instruction: Instruction
    seed: int


def build_samples(images: list[SourceImage], instructions: list[Instruction], seeds: list[int],
                  limit: int | None) -> list[Sample]:
    """The fixed sample order: image-major, then instruction, then seed; ``limit`` keeps the first N."""
    samples = [Sample(im, ins, s) for im in images for ins in instructions for s in seeds]
    return samples[:limit] if limit else samples


def output_relpath(method: str, sample: Sample) -> str:
    return f"images/{method}/{sample.image.id}__{sample.instruction.id}__s{sample.seed}.png"


def source_relpath(image_id: str) -> str:
    return f"sources/{image_id}.png"


# ---------------------------------------------------------------------------------------------------------- run
def run_benchmark(cfg: BenchmarkConfig, dist: Dist | None = None) -> Path:
    """Run (or resume) the benchmark into ``cfg.out``; rank 0 writes the tables. Returns ``cfg.out``."""
    check_methods(cfg.methods)
    if cfg.latency_only:
        from benchmark.latency import run_latency

        return run_latency(cfg, dist)
    dist = dist or Dist.from_env(cfg.device)
    device = torch.device(dist.device(cfg.device))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    session = now()

    instructions = load_instructions(cfg.instructions)
    images, skipped = load_images(cfg.images, max_side=cfg.resolution)
    samples = build_samples(images, instructions, cfg.seeds, cfg.limit)
    previous = read_run(out)
    sources = {name: model_source(cfg, name) for name in cfg.methods}
    scoring, scoring_notes = check_resume(cfg, previous, sources, dist)

    # Scoring models first: a missing face pack / CLIP fails here, before any edit.
    scorer = None
    if not cfg.score_later:
        scorer = Scorer.from_config(replace(scoring, device=str(device))).load()

    marker = out / store.PARTS_DIR / DONE_MARKER.format(rank=dist.rank)
    if marker.exists():  # a marker from an earlier launch; removed before the start barrier
        marker.unlink()
    if dist.is_main:
        if dist.world == 1:  # parts left by an earlier multi-process run that did not get to merge
            store.merge_parts(out, ROWS, store.row_key)
            store.merge_parts(out, METHODS)
        save_sources(out, images)
        inputs = {"images": {"spec": cfg.images, "count": len(images), "ids": [im.id for im in images],
                             "skipped": skipped, "max_side": cfg.resolution},
                  "instructions": {"path": str(cfg.instructions or DEFAULT_INSTRUCTIONS), "count": len(instructions),
                                   "sha256": instructions_sha256(cfg.instructions, instructions)}}
        run = run_record(cfg, previous, session, sources, device, dist, inputs)
        if scorer is not None:
            run["scoring"] = {"config": scoring.to_json(), "models": scorer.describe(), "demo_scorers": scoring_notes,
                              "identity": scorer.identity_backends()}
        write_run(out, run)
    dist.barrier()  # parts merged and run.json written before any process reads what is done

    edit_all(cfg, samples, device, scorer, session, dist, sources)
    if dist.world > 1:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"rank": dist.rank, "session": session, "time": now()}))
    if dist.is_main:
        finish(cfg, device, dist)
    return out


def check_resume(cfg: BenchmarkConfig, previous: dict[str, Any] | None, sources: dict[str, Any],
                 dist: Dist) -> tuple[ScoringConfig, list[str]]:
    """Refuse to resume with other settings; the scoring config after the demo fallback and its notes (printed by
    rank 0, with a note per method on a demo model; the notes of ``--score-later`` come when it scores)."""
    from instantportrait.methods.sources import demo_notice

    check_fingerprint(previous, cfg.fingerprint(sources), cfg.out, cfg.methods)
    scoring, scoring_notes = cfg.scoring.with_demo_fallback(demo_world=cfg.demo_world_images)
    if not cfg.score_later:
        check_scoring(previous, scoring, cfg.out)
    if dist.is_main:
        notes = [demo_notice(s) for s in sources.values() if s.kind == "demo"]
        for note in notes + ([] if cfg.score_later else scoring_notes + unavailable_notes(scoring)):
            print(note, file=sys.stderr, flush=True)
    return scoring, scoring_notes


def unavailable_notes(scoring: ScoringConfig) -> list[str]:
    """One line per identity column recorded as unavailable (its model is not installed here)."""
    return [f"{column} is recorded as unavailable: {why}" for column, why in scoring.unavailable.items()]


def save_sources(out: Path, images: list[SourceImage]) -> None:
    """The sources as loaded (and scored), once, for the grid and for scoring later."""
    (out / "sources").mkdir(exist_ok=True)
    for im in images:
        path = out / source_relpath(im.id)
        if not path.exists():
            im.image.save(path)


def run_record(cfg: BenchmarkConfig, previous: dict[str, Any] | None, session: str, sources: dict[str, Any],
               device: torch.device, dist: Dist, inputs: dict[str, Any]) -> dict[str, Any]:
    """``run.json`` for this session: the earlier one updated (its sessions kept) with settings, environment and
    ``inputs`` (the images and instructions)."""
    run = previous or {"created": session}
    run.update({
        "updated": session, "mode": "benchmark", "command": sys.argv, "config": cfg.to_json(),
        "fingerprint": cfg.fingerprint(sources), "environment": environment(device, dist), **inputs,
        "thresholds": {"det_size": cfg.scoring.det_size, "det_thresh": cfg.scoring.det_thresh,
                       "directional_eps": cfg.scoring.directional_eps, "confidence": 0.95,
                       "confidence_interval": "percentile bootstrap over images (summary.json: statistics)"},
        "source_caption": cfg.source_caption, "resolution": cfg.resolution,
        "memory": MEMORY_NOTE[device.type if device.type in MEMORY_NOTE else "cpu"], "timing": TIMING_NOTE,
        "reference_method": REFERENCE_METHOD, "random_weights": cfg.random_weights,
        "model_sources": {m: {"kind": s.kind, "location": s.location, "resolution": s.resolution}
                          for m, s in sources.items()},
    })
    run.setdefault("sessions", []).append({"started": session, "world_size": dist.world,
                                           "device_name": run["environment"]["device_name"]})
    return run


def edit_all(cfg: BenchmarkConfig, samples: list[Sample], device: torch.device, scorer: Scorer | None,
             session: str, dist: Dist, sources: dict[str, Any]) -> None:
    """Every method over this process's share of the samples not yet done; one record per method."""
    out = cfg.out
    done = {store.row_key(r) for r in store.read_all(out, ROWS)}
    rows_path = out / f"{ROWS}.jsonl" if dist.world == 1 else store.part_path(out, ROWS, dist.rank)
    methods_path = out / f"{METHODS}.jsonl" if dist.world == 1 else store.part_path(out, METHODS, dist.rank)
    writer = store.AsyncRowWriter(store.JsonlAppender(rows_path))
    method_log = store.JsonlAppender(methods_path)
    try:
        for name in cfg.methods:
            mine = samples[dist.rank::dist.world]
            pending = [s for s in mine if (name, s.image.id, s.instruction.id, s.seed) not in done]
            if not pending:
                logger.info("%s: all %d samples of this process are done", name, len(mine))
                continue
            record = run_method(cfg, name, pending, device, writer, scorer, session, dist, sources[name])
            method_log.write({**record, "session": session, "rank": dist.rank, "time": now()})
    finally:
        writer.close()
        method_log.close()


def finish(cfg: BenchmarkConfig, device: torch.device, dist: Dist) -> None:
    """Rank 0: wait for the other processes and merge their parts, score later if asked, write the tables."""
    out = cfg.out
    if dist.world > 1:
        wait_for_markers(out, dist.world, cfg.merge_timeout_s)
        store.merge_parts(out, ROWS, store.row_key)
        store.merge_parts(out, METHODS)
        try:
            (out / store.PARTS_DIR).rmdir()
        except OSError:  # not empty: parts of processes that did not finish stay for the next run
            pass
    if cfg.score_later:
        score_pending(out, replace(cfg.scoring, device=str(device)), progress=cfg.progress)
    from benchmark.report import write_report

    write_report(out)


def wait_for_markers(out: Path, world: int, timeout_s: float) -> None:
    """Rank 0 waits until every process has written its done marker (polling; no collective with a timeout)."""
    t0 = time.monotonic()
    while True:
        missing = [r for r in range(world) if not (out / store.PARTS_DIR / DONE_MARKER.format(rank=r)).exists()]
        if not missing:
            for r in range(world):
                (out / store.PARTS_DIR / DONE_MARKER.format(rank=r)).unlink()
            return
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"processes {missing} did not finish within {timeout_s:.0f} s; their rows stay in "
                               f"{out / store.PARTS_DIR} and are merged by the next run")
        time.sleep(MERGE_POLL_S)


def run_method(cfg: BenchmarkConfig, name: str, pending: list[Sample], device: torch.device,
               writer: store.AsyncRowWriter, scorer: Scorer | None, session: str, dist: Dist,
               source: Any = None) -> dict[str, Any]:
    """Load one method (from ``source``, default :func:`model_source`), warm it up and edit every pending sample;
    returns the method's record."""
    from tqdm import tqdm

    rss0 = rss_mb()
    cuda0 = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    source = source or model_source(cfg, name)
    editor = make_editor(cfg, name, str(device), source)
    info = load_editor(editor, cfg, device, source)
    info["mem_kind"] = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_delta"
    if info["status"] != "ok":
        logger.warning("%s: %s: %s", name, info["status"], info["message"])
        editor.unload()
        return info
    settings = cfg.settings_for(name)
    try:
        for _ in range(cfg.warmup):
            editor.edit([pending[0].image.image], [pending[0].instruction.instruction], seed=pending[0].seed,
                        settings=settings)
        sync(device)
    except Exception as exc:
        editor.unload()
        return {**info, "status": "warm-up failed", "message": f"{type(exc).__name__}: {exc}"}

    edit_total = 0.0
    bar = tqdm(total=len(pending), desc=f"{name} [{dist.rank}/{dist.world}]" if dist.world > 1 else name,
               unit="edit", position=dist.rank, disable=not cfg.progress, dynamic_ncols=True)
    loop_t0 = time.perf_counter()
    for sample in pending:
        row_t0 = time.perf_counter()
        ins = sample.instruction
        row: dict[str, Any] = {
            "method": name, "image": sample.image.id, "instruction_id": ins.id, "seed": sample.seed,
            "category": ins.category, "instruction": ins.instruction, "target_caption": ins.target_caption,
            "source_caption": ins.source_caption or cfg.source_caption, "source": source_relpath(sample.image.id),
            "width": sample.image.image.width, "height": sample.image.image.height,
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        output: PIL.Image.Image | None = None
        sync(device)
        t0 = time.perf_counter()
        try:
            output = editor.edit([sample.image.image], [ins.instruction], seed=sample.seed, settings=settings)[0]
            sync(device)
            edit_s = time.perf_counter() - t0
            row.update(status="ok", error=None)
        except Exception as exc:  # one failed edit (e.g. out of memory) is a row, not the end of the run
            edit_s = time.perf_counter() - t0
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            if device.type == "cuda":
                torch.cuda.empty_cache()
        edit_total += edit_s
        mem = (torch.cuda.max_memory_allocated(device) / 2**20 - cuda0 if device.type == "cuda"
               else rss_mb() - rss0)
        row.update(edit_ms=edit_s * 1000.0, nfe=info["nfe"], offload=info["offload"], mem_peak_mb=mem,
                   mem_kind=info["mem_kind"],
                   output=output_relpath(name, sample) if output is not None and cfg.save_images else None,
                   scored=False)
        if output is not None and scorer is not None:
            row.update(scorer.score(sample.image.id, sample.image.image, output, ins.target_caption,
                                    row["source_caption"]))
        row.update(rank=dist.rank, session=session, time=time.time())
        row["harness_ms"] = (time.perf_counter() - row_t0 - edit_s) * 1000.0
        writer.put(row, output if cfg.save_images else None,
                   cfg.out / row["output"] if row["output"] else None)
        bar.update(1)
    writer.drain()
    loop_wall = time.perf_counter() - loop_t0
    bar.close()
    editor.unload()
    del editor
    gc.collect()
    return {**info, "n_rows": len(pending), "edit_total_s": edit_total, "loop_wall_s": loop_wall,
            "loop_overhead_share": (loop_wall - edit_total) / edit_total if edit_total > 0 else None,
            "settings": {k: v for k, v in asdict(settings).items() if v not in (None, {})}}


def score_pending(out: Path, scoring: ScoringConfig | None = None, rescore: bool = False,
                  progress: bool = True) -> int:
    """Score saved outputs that have no scores yet (``--score-later`` or ``python -m benchmark score``).

    Reads ``sources/<image>.png`` and the saved output, appends one record per row to ``scores.jsonl``. With
    ``rescore`` every ok row is scored again (after moving the old ``scores.jsonl`` aside), e.g. with another face
    model. Returns how many rows were scored.
    """
    from tqdm import tqdm

    out = Path(out)
    run = read_run(out)
    if run is None:
        raise ValueError(f"{out} holds no {RUN_FILE}: not a benchmark results folder")
    if scoring is None:
        recorded = (run.get("scoring") or {}).get("config") or (run.get("config") or {}).get("scoring")
        scoring = ScoringConfig(**recorded) if recorded else ScoringConfig()
    scoring, notes = scoring.with_demo_fallback(demo_world=is_demo_world_spec((run.get("images") or {}).get("spec")))
    for note in notes + unavailable_notes(scoring):
        print(note, file=sys.stderr, flush=True)
    scores_path = out / f"{SCORES}.jsonl"
    if rescore:
        if scores_path.exists():
            os.replace(scores_path, out / f"{SCORES}.{int(time.time())}.jsonl.bak")
    else:
        check_scoring(run, scoring, out)
    rows = store.dedupe(store.read_all(out, ROWS))
    have = {store.row_key(s) for s in store.read_jsonl(scores_path, repair=True)}
    pending = [r for r in rows if r.get("status") == "ok" and r.get("output")
               and (rescore or not r.get("scored")) and store.row_key(r) not in have]
    scorer = Scorer.from_config(scoring).load()
    run["scoring"] = {"config": scoring.to_json(), "models": scorer.describe(), "demo_scorers": notes,
                      "identity": scorer.identity_backends()}
    write_run(out, run)
    app = store.JsonlAppender(scores_path)
    sources: dict[str, PIL.Image.Image] = {}
    try:
        for row in tqdm(pending, desc="scoring", unit="row", disable=not progress):
            if row["image"] not in sources:
                sources[row["image"]] = PIL.Image.open(out / row["source"]).convert("RGB")
            output = PIL.Image.open(out / row["output"]).convert("RGB")
            scores = scorer.score(row["image"], sources[row["image"]], output, row["target_caption"],
                                  row.get("source_caption") or DEFAULT_SOURCE_CAPTION)
            app.write({**{k: row[k] for k in store.KEY_FIELDS}, **scores})
    finally:
        app.close()
    return len(pending)

"""python app.py [--tiny] [--device cuda] [--model ipnet=/path] [--port 7860]

The InstantPortrait Gradio demo (a Hugging Face Space: ``sdk: gradio``, ``app_file: app.py``): IPNet side by side
with the multi-step teacher and the baselines, one tile per method with its network evaluations, latency, identity
similarity to the input and CLIP-T to the instruction. It runs the registry's editors and the benchmark's scorers,
so what a visitor sees is what the benchmark measures.

Which model each method uses (real weights, shipped demo models, or — only with ``--tiny`` — tiny random-weight
stand-ins for testing the interface) is decided in :mod:`instantportrait.methods.sources`; all settings are in
:mod:`instantportrait.app.settings` (``python app.py --help``). This file is layout only; request handling lives in
:mod:`instantportrait.app.logic`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home (must precede `import gradio`)

import gradio as gr  # noqa: E402

from instantportrait.app import (  # noqa: E402
    AppSettings,
    EditRequest,
    EditService,
    RequestResult,
    settings_from_args,
    zero_gpu,
)
from instantportrait.demo.examples import write_demo_world_examples, write_examples  # noqa: E402

logger = logging.getLogger("instantportrait.app")

TITLE = "InstantPortrait: one-step portrait editing"
INTRO = """# InstantPortrait — one-step portrait editing
Upload a portrait, describe the edit, and compare **IPNet** (our one-step student, distilled from the
identity-enhanced teacher **IDE-Net**) with the multi-step baselines. Each tile shows the method's **network
evaluations**, its **latency**, **ID-sim** (insightface cosine between the input's face and the output's face) and
**CLIP-T** (CLIP similarity between the output and the instruction) — the same editors and scorers as the benchmark.
"""
CSS = """
.method-tile img { object-fit: contain; }
#status { min-height: 2em; }
footer { display: none !important; }
"""


def portrait_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose preprocessing hands the app the uploaded file untouched.

    Gradio's own preprocessing opens the file with PIL and converts its mode before the app sees it, so a
    non-image upload fails inside Gradio with an unhelpful error and RGBA/16-bit/CMYK inputs are converted naively.
    Passing the path on lets :func:`instantportrait.app.logic.prepare_input` do both properly. (An instance-level
    override: a ``gr.Image`` subclass would make Gradio write an ``app.pyi`` stub next to this file.)
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    gradio_preprocess = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is None:
            return None
        if payload.path is None:  # a data: URL (pasted image): let gradio write it to a file
            return gradio_preprocess(payload)
        return str(payload.path)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _number(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _outputs(result: RequestResult, methods: list[str]) -> list[Any]:
    """Component updates in the order of the event's outputs: status, slider, table, then (image, caption) per
    registered method."""
    pair = result.slider()
    slider = (gr.update(value=(pair[0], pair[1]), label=pair[2], visible=True) if pair
              else gr.update(value=None, visible=False))
    out: list[Any] = [result.status_markdown(), slider, result.table()]
    by_method = {r.method: r for r in result.results}
    for m in methods:
        r = by_method.get(m)
        if r is None:
            out += [gr.update(value=None, visible=False), gr.update(value="", visible=False)]
        else:
            out += [gr.update(value=r.image, label=r.label, visible=True), gr.update(value=r.caption(), visible=True)]
    return out


def build_demo(service: EditService) -> gr.Blocks:
    """The page: inputs and examples on the left, status, before/after slider, tiles and table on the right."""
    methods = list(service.sources)
    examples = write_examples(service.work_dir / "examples")

    # delete_cache: visitors' uploads and results older than an hour are removed every 30 minutes (and at shutdown).
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(service.banner_markdown(), elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = portrait_input(label="Portrait", sources=["upload", "webcam", "clipboard"],
                                       elem_id="input-image", height=320)
                instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction",
                                         placeholder="e.g. wearing hipster glasses and a plaid shirt")
                chosen = gr.CheckboxGroup(service.method_choices(), value=service.default_methods(),
                                          label="Methods", elem_id="methods")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
                    button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Accordion("Advanced (multi-step methods)", open=False):
                    steps = gr.Slider(0, 100, value=0, step=1, label="Sampling steps (0 = each method's default: "
                                      "IDE-Net 20, InstructPix2Pix / MagicBrush 100)")
                    guidance = gr.Slider(0, 15, value=7.5, step=0.5, label="Text guidance scale")
                    image_guidance = gr.Slider(0, 5, value=1.5, step=0.1, label="Image guidance scale")
            with gr.Column(scale=2, min_width=480):
                status = gr.Markdown(elem_id="status")
                slider = gr.ImageSlider(label="Before / after", type="pil", format="png", visible=False,
                                        elem_id="before-after", max_height=420)
                tiles: list[Any] = []
                with gr.Row(elem_id="tiles"):
                    for m in methods:
                        with gr.Column(min_width=220):
                            tiles.append(gr.Image(label=service.label(m), type="pil", format="png", visible=False,
                                                  interactive=False, elem_id=f"tile-{m}", elem_classes=["method-tile"],
                                                  height=260))
                            tiles.append(gr.Markdown(visible=False, elem_id=f"caption-{m}",
                                                     elem_classes=["method-caption"]))
                table = gr.Dataframe(label="Numbers (the same as in the tiles)", interactive=False, elem_id="numbers",
                                     wrap=True, column_widths=["15%", "14%", "10%", "9%", "8%", "10%", "8%", "26%"])
        gr.Examples([[str(path), text] for path, text in examples], inputs=[image, instruction],
                    label="Examples (instructions from the paper's poster)", cache_examples=False)
        if any(s.kind == "demo" for s in service.sources.values()):
            world = write_demo_world_examples(service.work_dir / "examples")
            gr.Examples([[str(path), text] for path, text in world], inputs=[image, instruction],
                        label="Examples for the toy demo models (held-out synthetic people, in the words they were "
                              "trained on)", cache_examples=False)

        def edit(image_path: Any, text: str | None, selected: list[str] | None, seed_value: Any, steps_value: Any,
                 guidance_value: Any, image_guidance_value: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
            """One request; everything it needs arrives as arguments."""
            try:
                seed_num = _number(seed_value)
                request = EditRequest(
                    image=image_path, instruction=text,
                    methods=tuple(sorted(selected or (), key=lambda m: methods.index(m) if m in methods else 1e9)),
                    seed=int(seed_num) if seed_num is not None and seed_num.is_integer() else -1,
                    steps=int(steps_value) if steps_value else None, guidance_scale=_number(guidance_value),
                    image_guidance_scale=_number(image_guidance_value))
                result = service.run(request, progress=lambda f, desc: progress(f, desc=desc))
            except Exception:  # last line of defence: a message, never a traceback
                logger.exception("request failed")
                result = RequestResult(error="Something went wrong on the server (the log has the details).")
            for message in ([result.error] if result.error else result.warnings):
                gr.Warning(message)
            return _outputs(result, methods)

        gr.on([button.click, instruction.submit], zero_gpu(edit),
              inputs=[image, instruction, chosen, seed, steps, guidance, image_guidance],
              outputs=[status, slider, table, *tiles], api_name="edit",
              concurrency_limit=service.settings.max_concurrency, concurrency_id="edit")
    return demo


def launch(demo: gr.Blocks, settings: AppSettings, service: EditService) -> str:
    """Start the queue and the server without blocking; returns the local URL."""
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.max_concurrency)
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share, ssr_mode=False,
                prevent_thread_lock=True, allowed_paths=[str(service.work_dir)], max_file_size="30mb",
                show_error=False, quiet=True, css=CSS, mcp_server=False)
    return demo.local_url or f"http://{settings.host}:{settings.port}/"


def serve(settings: AppSettings) -> tuple[gr.Blocks, EditService, str]:
    """Set up the models and scorers, build the page and start serving it (non-blocking): ``(demo, service, url)``.
    ``demo.close()`` stops it."""
    service = EditService.create(settings)
    demo = build_demo(service)
    return demo, service, launch(demo, settings, service)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up checks
    t0 = time.perf_counter()
    settings = settings_from_args(argv)
    try:
        demo, service, url = serve(settings)
    except OSError as exc:  # port in use, bad host
        print(f"error: cannot start the server on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. --model names a method that does not exist
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, source in service.sources.items():
        what = source.description if source.available else (source.reason or "")
        print(f"  {name:16s} {source.kind:8s} {what[:110]}")
    print(f"InstantPortrait demo running on {url} (ready in {time.perf_counter() - t0:.1f} s; Ctrl+C stops it)",
          flush=True)
    demo.block_thread()  # returns on Ctrl+C after closing the server
    return 0


if __name__ == "__main__":
    sys.exit(main())

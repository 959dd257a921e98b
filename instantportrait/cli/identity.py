"""Same person? ``python -m instantportrait identity A.jpg B.jpg [--backend auto|dlib|insightface|toy] [--json]``.

Prints the cosine similarity of the two largest faces' embeddings, the backend's own distance where it has one
(dlib), the same-person verdict and the backend. ``--json`` prints exactly one object with the keys ``similarity``,
``distance`` (``null`` where the backend has none), ``same_person`` and ``backend``. The verdict uses each model's own
rule (dlib: distance < 0.6; ArcFace packs and the toy pack: their cosine thresholds), so compare verdicts across
backends, never raw similarities.

``--backend auto`` uses insightface's ``buffalo_l`` when its pack is installed, else dlib; the toy demo pack (trained
on synthetic faces, meaningless on photos) only when named. Exit codes: 0 done, 2 a missing or unreadable image,
3 no face model available, 4 no face in an image.
"""

from __future__ import annotations

import argparse
import json
import sys

from instantportrait.errors import EXIT_INPUT, EXIT_MODEL, EXIT_NO_FACE, EXIT_OK

MAX_SIDE = 4096  # larger photos are downscaled before detection, as `edit` does


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_identity(args: argparse.Namespace) -> int:
    from instantportrait.errors import InvalidImageError, ModelNotAvailableError, NoFaceError
    from instantportrait.face.backends import open_face_encoder
    from instantportrait.imageio import load_image

    paths = (args.a, args.b)
    try:
        images = [load_image(p, max_side=MAX_SIDE).image for p in paths]  # validate both files before any model
    except InvalidImageError as exc:
        return _fail(str(exc), EXIT_INPUT)
    try:
        encoder = open_face_encoder(args.backend, pack=args.pack, root=args.root, device=args.device)
    except ModelNotAvailableError as exc:
        return _fail(str(exc), EXIT_MODEL)
    except ValueError as exc:  # e.g. --pack names a model that is not an insightface pack
        return _fail(str(exc), EXIT_INPUT)
    if args.backend == "toy":
        print("note: the toy demo face pack was trained on synthetic faces; on photos its verdict means nothing",
              file=sys.stderr)
    faces = []
    for path, image in zip(paths, images):
        try:
            faces.append(encoder.encode(image, what=f"image {path}"))
        except NoFaceError as exc:
            return _fail(str(exc), EXIT_NO_FACE)
    match = encoder.match(*faces)
    if args.json:
        print(json.dumps(match.to_dict()))
        return EXIT_OK
    distance = (f"{match.distance:.4f} (the backend's own distance)" if match.distance is not None
                else "none (this backend judges by cosine)")
    print(f"similarity   {match.similarity:.4f} (cosine of the face embeddings, on {match.backend}'s own scale)")
    print(f"distance     {distance}")
    print(f"same person  {'yes' if match.same_person else 'no'} ({match.rule})")
    print(f"backend      {match.backend}")
    return EXIT_OK


def add_identity_parser(sub: argparse._SubParsersAction) -> None:
    from instantportrait.face.backends import BACKENDS, DEFAULT_PACK

    p = sub.add_parser("identity", help="are the largest faces in two images the same person?",
                       description="python -m instantportrait identity a.jpg b.jpg --backend dlib --json")
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: insightface buffalo_l when installed, else dlib; toy: the demo pack (synthetic faces)")
    p.add_argument("--pack", default=DEFAULT_PACK, help="insightface pack name or folder (insightface and auto)")
    p.add_argument("--root", default=None, help="insightface root folder (packs in <root>/models/<pack>/)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (insightface only; dlib runs on the CPU)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: similarity, distance, same_person, backend")
    p.set_defaults(func=cmd_identity)

"""Faces: one face-encoder interface (detection, 5 landmarks, embeddings, the largest-face policy, same-person
verdicts; ``base``) with two backends, insightface-layout model packs (``encoder.FaceEncoder``: buffalo_l, antelopev2,
the toy demo pack, the tiny test pack) and dlib (``dlib_backend.DlibFaceEncoder``, CC0), chosen by name in
``backends.open_face_encoder``; pack installation and mirrors (``packs``), and face keypoint drawing / the 5-point
alignment template (``keypoints``)."""

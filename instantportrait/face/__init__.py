"""Faces: the ``FaceEncoder`` (detection, 5 landmarks, embeddings, the largest-face policy) over insightface-layout
model packs (``encoder``), pack installation and mirrors (``packs``), and face keypoint drawing / the 5-point
alignment template (``keypoints``)."""

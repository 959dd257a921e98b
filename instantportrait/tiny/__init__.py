"""Tiny random-weight stand-ins built from code in seconds: an InstructPix2Pix-format checkpoint and its tokenizer
(``diffusion``), an insightface-layout face pack (``face_pack``), a clip-anytorch model file (``clip``) and smooth
face-free images (``images``). A feature, not a model: ``app --tiny`` and latency runs use them, and every place that
shows one says so. The tests build on them too."""

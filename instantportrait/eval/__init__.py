"""Evaluation: CLIP scores (``clip_score``) and the one scorer the app, the benchmark and the trainers share."""

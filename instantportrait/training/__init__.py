"""What training needs inside the package: the loss terms (``losses``), DDIM inversion and teacher targets
(``inversion``), the differentiable ArcFace (``arcface``) and the paired-data schema and reader (``data``).
The training scripts themselves live in the repository's ``train/`` folder."""

"""The offline demo scorers, by role: :mod:`.data` (settings, render pool), :mod:`.face` (detector, identity
encoder, ONNX face pack), :mod:`.clip` (small CLIP) and :mod:`.cards` (model cards). ``python -m
train.train_scorers`` trains them all."""

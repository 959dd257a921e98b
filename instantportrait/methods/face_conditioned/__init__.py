"""The machinery InstantID and IP-Control share (face-conditioned text-to-image with an IP-Adapter and a ControlNet),
by role: ``resampler`` (face embedding -> tokens), ``attention`` (IP attention processors), ``ip_adapter`` (released
weights: reading, key mapping, installing, LoRA merge), ``sampling`` (the ControlNet + IP-Adapter denoising tail)
and ``base`` (:class:`~.base.FaceConditionedEditor`). Architectures and random-weight builders live in
:mod:`instantportrait.models.sdxl` / :mod:`instantportrait.models.sd15`; tiny releases in
:mod:`instantportrait.tiny.face_conditioned`."""

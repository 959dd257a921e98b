"""The IPNet pipeline (a diffusers ``DiffusionPipeline``), the ``conv_in`` widening that turns a text-to-image UNet
into an 8-channel InstructPix2Pix-style one, and the optional tiny decoder of the real-time path."""

"""Architecture configurations (SD1.5 / SDXL-class InstructPix2Pix, IPNet, ControlNet) and random-weight builders
for latency runs: the real shapes, no weights."""

"""Layer 3 — buffers: dma-buf objects, their representations and reference exporters."""

from dmabuf.buf.device import DirectDev, DmaDataDirection, DmaDev  # noqa: F401

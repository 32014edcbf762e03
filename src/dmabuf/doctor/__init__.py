"""Top layer — ``dmabuf doctor``: why is dma-buf / P2P (not) used on this machine?

The doctor reads a machine — the running one (``/``) or a captured root laid out like it — and
reports, each as a :class:`Finding` with a severity, the reason and the remedy:

* the kernel release and the build options that matter (:mod:`dmabuf.doctor.kconfig`);
* the device nodes and whether the current user may open them (:mod:`dmabuf.doctor.devnodes`);
* loaded modules (:mod:`dmabuf.doctor.modules`) and the command line
  (:mod:`dmabuf.doctor.cmdline`);
* the IOMMU state and groups (:mod:`dmabuf.doctor.iommu`);
* the PCI topology with ACS and the kernel's exact P2P decisions for the GPUs, NICs, NVMe and
  accelerators (:mod:`dmabuf.doctor.p2p`, through :mod:`dmabuf.pci`).

:func:`capture_root` writes such a root from the running machine (side-effect-free files only) so
that a bug report can carry the machine. ``docs/doctor.md`` explains every finding.

Kernel: kernel/configs.c, drivers/dma-buf/, drivers/pci/p2pdma.c, drivers/iommu/iommu.c,
kernel/module/procfs.c, drivers/base/devtmpfs.c.
"""

from __future__ import annotations

from dmabuf.doctor.capture import CaptureResult, capture_root
from dmabuf.doctor.diagnose import diagnose
from dmabuf.doctor.report import SCHEMA, SECTIONS, DoctorReport, Finding, Severity
from dmabuf.doctor.sysroot import MANIFEST, SysRoot

__all__ = [
    "MANIFEST",
    "SCHEMA",
    "SECTIONS",
    "CaptureResult",
    "DoctorReport",
    "Finding",
    "Severity",
    "SysRoot",
    "capture_root",
    "diagnose",
]

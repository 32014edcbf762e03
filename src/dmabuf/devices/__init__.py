"""Layer 5 — device drivers built only from the layers below (amdgpu/TTM, mlx5, nvme, vfio…).

* :mod:`~dmabuf.devices.platform` — :class:`Platform`: the modelled computer (RAM, BARs, IOMMU,
  per-function DMA views, driver binding);
* :mod:`~dmabuf.devices.base` — :class:`Device`: a bound PCI function with its DMA engine, fence
  timelines and job queues (:class:`WorkQueue`);
* :mod:`~dmabuf.devices.gpu` — :class:`Gpu`: an amdgpu/TTM-like dynamic dma-buf exporter.

Kernel: drivers/base/dd.c, drivers/gpu/drm/amd/amdgpu, drivers/gpu/drm/ttm, …
"""

# A plain list of re-exports; each module's owner appends only their own lines.
from dmabuf.devices.accel import Accel as Accel
from dmabuf.devices.accel import HabanalabsDmaBufOps as HabanalabsDmaBufOps
from dmabuf.devices.base import Device as Device
from dmabuf.devices.base import DeviceFenceOps as DeviceFenceOps
from dmabuf.devices.base import Job as Job
from dmabuf.devices.base import WorkQueue as WorkQueue
from dmabuf.devices.gpu import AmdgpuDomain as AmdgpuDomain
from dmabuf.devices.gpu import Gpu as Gpu
from dmabuf.devices.gpu import GpuBo as GpuBo
from dmabuf.devices.gpu import GpuBoMapping as GpuBoMapping
from dmabuf.devices.gpu import GpuDmaBufOps as GpuDmaBufOps
from dmabuf.devices.gpu import TtmPl as TtmPl
from dmabuf.devices.hmm_mirror import HmmMirror as HmmMirror
from dmabuf.devices.hmm_mirror import Mirror as Mirror
from dmabuf.devices.iommufd import IommufdCtx as IommufdCtx
from dmabuf.devices.nvme import BlockDevice as BlockDevice
from dmabuf.devices.nvme import Nvme as Nvme
from dmabuf.devices.nvme import P2pmemSysfs as P2pmemSysfs
from dmabuf.devices.nvme import VirtioBlk as VirtioBlk
from dmabuf.devices.platform import DEFAULT_RAM_SIZE as DEFAULT_RAM_SIZE
from dmabuf.devices.platform import Platform as Platform
from dmabuf.devices.rdma import RdmaNic as RdmaNic
from dmabuf.devices.vfio import VfioDeviceFeatureDmaBuf as VfioDeviceFeatureDmaBuf
from dmabuf.devices.vfio import VfioPciDevice as VfioPciDevice
from dmabuf.devices.vfio import VfioPciDmaBufOps as VfioPciDmaBufOps

"""The RDMA NIC importer: ib_umem_dmabuf + an mlx5-like HCA + a pyverbs-like facade (layer 5).

Modules, each named after the kernel file it models:

* :mod:`~dmabuf.devices.rdma.ib_verbs` — the verbs vocabulary (``IB_ACCESS_*``, ``IB_WR_*``,
  ``IB_WC_*``, QP states and masks), ``ib_check_mr_access``, ``ib_modify_qp_is_ok``;
* :mod:`~dmabuf.devices.rdma.umem_dmabuf` — ``ib_umem_dmabuf``: dynamic, pinned and
  pinned-revocable dma-buf attachments, map/unmap pages with the KERNEL-fence wait;
* :mod:`~dmabuf.devices.rdma.umem` — ``ib_umem_get`` over the process's user memory;
* :mod:`~dmabuf.devices.rdma.umr` — MKeys, MTTs and UMR updates (ZAP / ENABLE / revoke);
* :mod:`~dmabuf.devices.rdma.odp` — HCA page faults, ``pagefault_dmabuf_mr``;
* :mod:`~dmabuf.devices.rdma.mr` — mlx5 MR registration (four dma-buf kinds) and teardown;
* :mod:`~dmabuf.devices.rdma.cq`, :mod:`~dmabuf.devices.rdma.qp` — CQs, RC QPs, posting;
* :mod:`~dmabuf.devices.rdma.hca` — the transport engine moving real bytes through MKeys;
* :mod:`~dmabuf.devices.rdma.network` — LIDs, links, reachability between NIC ports;
* :mod:`~dmabuf.devices.rdma.mlx5_ib` — :class:`RdmaNic`, the driver bound to a NIC function;
* :mod:`~dmabuf.devices.rdma.uverbs` — the uverbs MR entry points and their checks;
* :mod:`~dmabuf.devices.rdma.verbs` — the pyverbs-like facade.

Kernel: drivers/infiniband/core/{umem_dmabuf,umem,verbs,uverbs_cmd,uverbs_std_types_mr}.c,
drivers/infiniband/hw/mlx5/{main,mr,odp,umr,qp,cq}.c; spec kernel-p2p-dma.md §3.1-3.3.
"""

from dmabuf.devices.rdma.cq import IbWc as IbWc
from dmabuf.devices.rdma.cq import Mlx5IbCq as Mlx5IbCq
from dmabuf.devices.rdma.hca import Hca as Hca
from dmabuf.devices.rdma.ib_verbs import IbAccess as IbAccess
from dmabuf.devices.rdma.ib_verbs import IbQpAttrMask as IbQpAttrMask
from dmabuf.devices.rdma.ib_verbs import IbQpState as IbQpState
from dmabuf.devices.rdma.ib_verbs import IbQpType as IbQpType
from dmabuf.devices.rdma.ib_verbs import IbSendFlags as IbSendFlags
from dmabuf.devices.rdma.ib_verbs import IbWcOpcode as IbWcOpcode
from dmabuf.devices.rdma.ib_verbs import IbWcStatus as IbWcStatus
from dmabuf.devices.rdma.ib_verbs import IbWrOpcode as IbWrOpcode
from dmabuf.devices.rdma.ib_verbs import ib_check_mr_access as ib_check_mr_access
from dmabuf.devices.rdma.ib_verbs import ib_modify_qp_is_ok as ib_modify_qp_is_ok
from dmabuf.devices.rdma.mlx5_ib import IbPd as IbPd
from dmabuf.devices.rdma.mlx5_ib import RdmaNic as RdmaNic
from dmabuf.devices.rdma.mr import Mlx5IbMr as Mlx5IbMr
from dmabuf.devices.rdma.mr import MrKind as MrKind
from dmabuf.devices.rdma.mr import mlx5_ib_dereg_mr as mlx5_ib_dereg_mr
from dmabuf.devices.rdma.mr import mlx5_ib_reg_user_mr as mlx5_ib_reg_user_mr
from dmabuf.devices.rdma.mr import mlx5_ib_reg_user_mr_dmabuf as mlx5_ib_reg_user_mr_dmabuf
from dmabuf.devices.rdma.network import IbPort as IbPort
from dmabuf.devices.rdma.network import IbSubnet as IbSubnet
from dmabuf.devices.rdma.qp import IbAhAttr as IbAhAttr
from dmabuf.devices.rdma.qp import IbQpAttr as IbQpAttr
from dmabuf.devices.rdma.qp import IbQpCap as IbQpCap
from dmabuf.devices.rdma.qp import IbQpInitAttr as IbQpInitAttr
from dmabuf.devices.rdma.qp import IbRecvWr as IbRecvWr
from dmabuf.devices.rdma.qp import IbSendWr as IbSendWr
from dmabuf.devices.rdma.qp import IbSge as IbSge
from dmabuf.devices.rdma.qp import Mlx5IbQp as Mlx5IbQp
from dmabuf.devices.rdma.umem import UserBuffer as UserBuffer
from dmabuf.devices.rdma.umem import UserMemory as UserMemory
from dmabuf.devices.rdma.umem_dmabuf import IbUmemDmabuf as IbUmemDmabuf
from dmabuf.devices.rdma.umem_dmabuf import ib_umem_dmabuf_get as ib_umem_dmabuf_get
from dmabuf.devices.rdma.umem_dmabuf import ib_umem_dmabuf_get_pinned as ib_umem_dmabuf_get_pinned
from dmabuf.devices.rdma.umem_dmabuf import (
    ib_umem_dmabuf_get_pinned_revocable_and_lock as ib_umem_dmabuf_get_pinned_revocable_and_lock,
)
from dmabuf.devices.rdma.umem_dmabuf import ib_umem_dmabuf_map_pages as ib_umem_dmabuf_map_pages
from dmabuf.devices.rdma.umem_dmabuf import ib_umem_dmabuf_release as ib_umem_dmabuf_release
from dmabuf.devices.rdma.umem_dmabuf import (
    ib_umem_dmabuf_unmap_pages as ib_umem_dmabuf_unmap_pages,
)
from dmabuf.devices.rdma.umr import Mlx5Mkey as Mlx5Mkey
from dmabuf.devices.rdma.uverbs import ib_uverbs_reg_dmabuf_mr as ib_uverbs_reg_dmabuf_mr
from dmabuf.devices.rdma.uverbs import ib_uverbs_reg_mr as ib_uverbs_reg_mr

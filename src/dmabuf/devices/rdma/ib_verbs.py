"""include/rdma/ib_verbs.h + drivers/infiniband/core/verbs.c: the verbs vocabulary and its checks.

The RDMA subsystem speaks one vocabulary from the wire protocol up to ``libibverbs``: memory
access rights (``IB_ACCESS_*``), work-request opcodes (``IB_WR_*``), completion statuses and
opcodes (``IB_WC_*``), queue-pair types, states and attribute masks. The values here are the
user-space ABI ones (``enum ibv_access_flags``, ``enum ibv_wr_opcode``, ``enum ibv_wc_status``,
``enum ibv_qp_attr_mask`` in rdma-core's ``verbs.h``), which for every member modelled equal the
kernel's ``IB_UVERBS_*`` / ``IB_*`` values, so one set of enums serves the driver model and the
pyverbs-like facade (:mod:`dmabuf.devices.rdma.verbs`).

Two kernel checks live here because every MR and QP path goes through them:

* :func:`ib_check_mr_access` — ``REMOTE_WRITE`` or ``REMOTE_ATOMIC`` need ``LOCAL_WRITE``
  (``-EINVAL``); flags outside ``IB_ACCESS_SUPPORTED`` are ``-EINVAL``; ``ON_DEMAND`` on a device
  without ODP and the ``FLUSH_*`` rights on a device without them are ``-EOPNOTSUPP``.
* :func:`ib_modify_qp_is_ok` — the QP state machine of the IB spec as the kernel encodes it in
  ``qp_state_table``: which transitions exist, which attributes each transition requires and
  which it accepts, per QP type (RC, UC, UD modelled).

Kernel: include/rdma/ib_verbs.h (ib_check_mr_access, IB_ACCESS_SUPPORTED, enum ib_wc_status),
include/uapi/rdma/ib_user_ioctl_verbs.h (IB_UVERBS_ACCESS_*), drivers/infiniband/core/verbs.c
(qp_state_table, ib_modify_qp_is_ok); rdma-core libibverbs/verbs.h (the same values).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass

from dmabuf.errors import DmaBufError

__all__ = [
    "IB_ACCESS_OPTIONAL",
    "IB_ACCESS_SUPPORTED",
    "REG_DMABUF_MR_ACCESS",
    "IbAccess",
    "IbQpAttrMask",
    "IbQpState",
    "IbQpType",
    "IbSendFlags",
    "IbWcFlags",
    "IbWcOpcode",
    "IbWcStatus",
    "IbWrOpcode",
    "ib_access_writable",
    "ib_check_mr_access",
    "ib_modify_qp_is_ok",
    "wc_status_str",
]


class IbAccess(enum.IntFlag):
    """Memory access rights of an MR or a QP — ``enum ib_access_flags`` / ``ibv_access_flags``.

    ``LOCAL_READ`` is implicit (always granted). ``RELAXED_ORDERING`` is the first of the
    *optional* flags (``IB_ACCESS_OPTIONAL_FIRST = 1 << 20``), which a device may ignore.

    Kernel: include/rdma/ib_verbs.h, enum ib_access_flags;
    include/uapi/rdma/ib_user_ioctl_verbs.h, enum ib_uverbs_access_flags.
    """

    LOCAL_WRITE = 1 << 0
    REMOTE_WRITE = 1 << 1
    REMOTE_READ = 1 << 2
    REMOTE_ATOMIC = 1 << 3
    MW_BIND = 1 << 4
    ZERO_BASED = 1 << 5
    ON_DEMAND = 1 << 6
    HUGETLB = 1 << 7
    FLUSH_GLOBAL = 1 << 8
    FLUSH_PERSISTENT = 1 << 9
    RELAXED_ORDERING = 1 << 20


#: ``IB_ACCESS_OPTIONAL``: the optional-flags range ``[1 << 20, 1 << 30)``.
IB_ACCESS_OPTIONAL = ((1 << 30) - 1) & ~((1 << 20) - 1)
#: ``IB_ACCESS_SUPPORTED = ((IB_ACCESS_FLUSH_PERSISTENT << 1) - 1) | IB_ACCESS_OPTIONAL``.
IB_ACCESS_SUPPORTED = ((int(IbAccess.FLUSH_PERSISTENT) << 1) - 1) | IB_ACCESS_OPTIONAL
#: The access flags ``UVERBS_METHOD_REG_DMABUF_MR`` accepts (``uverbs_get_flags32`` mask).
REG_DMABUF_MR_ACCESS = int(IbAccess.LOCAL_WRITE | IbAccess.REMOTE_READ | IbAccess.REMOTE_WRITE
                           | IbAccess.REMOTE_ATOMIC | IbAccess.RELAXED_ORDERING)


def ib_access_writable(access: int) -> bool:
    """Whether an MR with ``access`` may be written — ``ib_access_writable()``.

    The MW_BIND right is treated as writable too (a memory window may grant remote write), as in
    the kernel.

    Kernel: include/rdma/ib_umem.h / ib_verbs.h, ib_access_writable().
    """
    return bool(access & (IbAccess.LOCAL_WRITE | IbAccess.REMOTE_WRITE | IbAccess.REMOTE_ATOMIC
                          | IbAccess.MW_BIND))


def ib_check_mr_access(flags: int, *, odp: bool = True, flush_global: bool = False,
                       flush_persistent: bool = False) -> None:
    """Validate MR access flags against the device — ``ib_check_mr_access()``.

    Args:
        flags: ``IB_ACCESS_*`` bits.
        odp: the device has ``IBK_ON_DEMAND_PAGING``.
        flush_global, flush_persistent: the device has ``IB_DEVICE_FLUSH_GLOBAL`` /
            ``IB_DEVICE_FLUSH_PERSISTENT``.
    Context: pure.
    Raises:
        DmaBufError(EINVAL): ``REMOTE_WRITE``/``REMOTE_ATOMIC`` without ``LOCAL_WRITE``; bits
            outside ``IB_ACCESS_SUPPORTED``.
        DmaBufError(EOPNOTSUPP): ``ON_DEMAND`` without ODP; a ``FLUSH_*`` right the device
            lacks.
        TypeError: ``flags`` is not an int.
    Kernel: include/rdma/ib_verbs.h, ib_check_mr_access().
    """
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"access flags must be an int, not {type(flags).__name__}")
    if flags & (IbAccess.REMOTE_ATOMIC | IbAccess.REMOTE_WRITE) \
            and not flags & IbAccess.LOCAL_WRITE:
        raise DmaBufError(errno.EINVAL, f"access {flags:#x}: REMOTE_WRITE and REMOTE_ATOMIC "
                          "require LOCAL_WRITE; add IBV_ACCESS_LOCAL_WRITE")
    if flags < 0 or flags & ~IB_ACCESS_SUPPORTED:
        raise DmaBufError(errno.EINVAL, f"access {flags:#x} has bits outside "
                          f"IB_ACCESS_SUPPORTED ({IB_ACCESS_SUPPORTED:#x})")
    if flags & IbAccess.ON_DEMAND and not odp:
        raise DmaBufError(errno.EOPNOTSUPP, "IB_ACCESS_ON_DEMAND: the device has no on-demand "
                          "paging support")
    if (flags & IbAccess.FLUSH_GLOBAL and not flush_global) or \
            (flags & IbAccess.FLUSH_PERSISTENT and not flush_persistent):
        raise DmaBufError(errno.EOPNOTSUPP, "IB_ACCESS_FLUSH_*: the device cannot flush")


class IbWrOpcode(enum.IntEnum):
    """Work-request opcodes — ``enum ibv_wr_opcode`` (rdma-core libibverbs/verbs.h)."""

    RDMA_WRITE = 0
    RDMA_WRITE_WITH_IMM = 1
    SEND = 2
    SEND_WITH_IMM = 3
    RDMA_READ = 4
    ATOMIC_CMP_AND_SWP = 5
    ATOMIC_FETCH_AND_ADD = 6


class IbWcOpcode(enum.IntEnum):
    """Work-completion opcodes — ``enum ibv_wc_opcode``."""

    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    COMP_SWAP = 3
    FETCH_ADD = 4
    BIND_MW = 5
    LOCAL_INV = 6
    TSO = 7
    RECV = 128
    RECV_RDMA_WITH_IMM = 129


class IbWcStatus(enum.IntEnum):
    """Work-completion status — ``enum ibv_wc_status`` / ``enum ib_wc_status``."""

    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_EEC_OP_ERR = 3
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    MW_BIND_ERR = 6
    BAD_RESP_ERR = 7
    LOC_ACCESS_ERR = 8
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13
    LOC_RDD_VIOL_ERR = 14
    REM_INV_RD_REQ_ERR = 15
    REM_ABORT_ERR = 16
    INV_EECN_ERR = 17
    INV_EEC_STATE_ERR = 18
    FATAL_ERR = 19
    RESP_TIMEOUT_ERR = 20
    GENERAL_ERR = 21


_WC_STATUS_STR = {
    IbWcStatus.SUCCESS: "success",
    IbWcStatus.LOC_LEN_ERR: "local length error",
    IbWcStatus.LOC_QP_OP_ERR: "local QP operation error",
    IbWcStatus.LOC_EEC_OP_ERR: "local EE context operation error",
    IbWcStatus.LOC_PROT_ERR: "local protection error",
    IbWcStatus.WR_FLUSH_ERR: "Work Request Flushed Error",
    IbWcStatus.MW_BIND_ERR: "memory management operation error",
    IbWcStatus.BAD_RESP_ERR: "bad response error",
    IbWcStatus.LOC_ACCESS_ERR: "local access error",
    IbWcStatus.REM_INV_REQ_ERR: "remote invalid request error",
    IbWcStatus.REM_ACCESS_ERR: "remote access error",
    IbWcStatus.REM_OP_ERR: "remote operation error",
    IbWcStatus.RETRY_EXC_ERR: "transport retry counter exceeded",
    IbWcStatus.RNR_RETRY_EXC_ERR: "RNR retry counter exceeded",
    IbWcStatus.LOC_RDD_VIOL_ERR: "local RDD violation error",
    IbWcStatus.REM_INV_RD_REQ_ERR: "remote invalid RD request",
    IbWcStatus.REM_ABORT_ERR: "aborted error",
    IbWcStatus.INV_EECN_ERR: "invalid EE context number",
    IbWcStatus.INV_EEC_STATE_ERR: "invalid EE context state",
    IbWcStatus.FATAL_ERR: "fatal error",
    IbWcStatus.RESP_TIMEOUT_ERR: "response timeout error",
    IbWcStatus.GENERAL_ERR: "general error",
}


def wc_status_str(status: int) -> str:
    """The text ``ibv_wc_status_str()`` gives for ``status`` ("unknown" when out of range).

    Kernel: drivers/infiniband/core/verbs.c, ib_wc_status_msg() (text as rdma-core's
    ibv_wc_status_str()).
    """
    try:
        return _WC_STATUS_STR[IbWcStatus(status)]
    except ValueError:
        return "unknown"


class IbSendFlags(enum.IntFlag):
    """Send flags of a work request — ``enum ibv_send_flags``."""

    FENCE = 1 << 0
    SIGNALED = 1 << 1
    SOLICITED = 1 << 2
    INLINE = 1 << 3


class IbWcFlags(enum.IntFlag):
    """Work-completion flags — ``enum ibv_wc_flags``."""

    GRH = 1 << 0
    WITH_IMM = 1 << 1


class IbQpType(enum.IntEnum):
    """Queue-pair transport types — ``enum ibv_qp_type`` (RC, UC, UD modelled)."""

    RC = 2
    UC = 3
    UD = 4


class IbQpState(enum.IntEnum):
    """Queue-pair states — ``enum ibv_qp_state``."""

    RESET = 0
    INIT = 1
    RTR = 2
    RTS = 3
    SQD = 4
    SQE = 5
    ERR = 6


class IbQpAttrMask(enum.IntFlag):
    """Which fields of a ``QPAttr`` a modify sets — ``enum ibv_qp_attr_mask``."""

    STATE = 1 << 0
    CUR_STATE = 1 << 1
    EN_SQD_ASYNC_NOTIFY = 1 << 2
    ACCESS_FLAGS = 1 << 3
    PKEY_INDEX = 1 << 4
    PORT = 1 << 5
    QKEY = 1 << 6
    AV = 1 << 7
    PATH_MTU = 1 << 8
    TIMEOUT = 1 << 9
    RETRY_CNT = 1 << 10
    RNR_RETRY = 1 << 11
    RQ_PSN = 1 << 12
    MAX_QP_RD_ATOMIC = 1 << 13
    ALT_PATH = 1 << 14
    MIN_RNR_TIMER = 1 << 15
    SQ_PSN = 1 << 16
    MAX_DEST_RD_ATOMIC = 1 << 17
    PATH_MIG_STATE = 1 << 18
    CAP = 1 << 19
    DEST_QPN = 1 << 20
    RATE_LIMIT = 1 << 25


M = IbQpAttrMask
S = IbQpState
T = IbQpType


@dataclass(frozen=True)
class _Transition:
    req: dict[IbQpType, int]
    opt: dict[IbQpType, int]


def _tr(req: dict[IbQpType, int] | None = None,
        opt: dict[IbQpType, int] | None = None) -> _Transition:
    return _Transition(req or {}, opt or {})


#: ``qp_state_table`` of drivers/infiniband/core/verbs.c for RC, UC and UD (transitions that do
#: not appear are invalid).
_QP_STATE_TABLE: dict[tuple[IbQpState, IbQpState], _Transition] = {
    (S.RESET, S.RESET): _tr(),
    (S.RESET, S.INIT): _tr(req={T.UD: M.PKEY_INDEX | M.PORT | M.QKEY,
                                T.UC: M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS,
                                T.RC: M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS}),
    (S.INIT, S.RESET): _tr(),
    (S.INIT, S.ERR): _tr(),
    (S.INIT, S.INIT): _tr(opt={T.UD: M.PKEY_INDEX | M.PORT | M.QKEY,
                               T.UC: M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS,
                               T.RC: M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS}),
    (S.INIT, S.RTR): _tr(req={T.UC: M.AV | M.PATH_MTU | M.DEST_QPN | M.RQ_PSN,
                              T.RC: M.AV | M.PATH_MTU | M.DEST_QPN | M.RQ_PSN
                              | M.MAX_DEST_RD_ATOMIC | M.MIN_RNR_TIMER},
                         opt={T.UD: M.PKEY_INDEX | M.QKEY,
                              T.UC: M.ALT_PATH | M.ACCESS_FLAGS | M.PKEY_INDEX,
                              T.RC: M.ALT_PATH | M.ACCESS_FLAGS | M.PKEY_INDEX}),
    (S.RTR, S.RESET): _tr(),
    (S.RTR, S.ERR): _tr(),
    (S.RTR, S.RTS): _tr(req={T.UD: M.SQ_PSN, T.UC: M.SQ_PSN,
                             T.RC: M.TIMEOUT | M.RETRY_CNT | M.RNR_RETRY | M.SQ_PSN
                             | M.MAX_QP_RD_ATOMIC},
                        opt={T.UD: M.CUR_STATE | M.QKEY,
                             T.UC: M.CUR_STATE | M.ALT_PATH | M.ACCESS_FLAGS | M.PATH_MIG_STATE,
                             T.RC: M.CUR_STATE | M.ALT_PATH | M.ACCESS_FLAGS
                             | M.MIN_RNR_TIMER | M.PATH_MIG_STATE}),
    (S.RTS, S.RESET): _tr(),
    (S.RTS, S.ERR): _tr(),
    (S.RTS, S.RTS): _tr(opt={T.UD: M.CUR_STATE | M.QKEY,
                             T.UC: M.CUR_STATE | M.ACCESS_FLAGS | M.ALT_PATH | M.PATH_MIG_STATE,
                             T.RC: M.CUR_STATE | M.ACCESS_FLAGS | M.ALT_PATH
                             | M.PATH_MIG_STATE | M.MIN_RNR_TIMER}),
    (S.RTS, S.SQD): _tr(opt={T.UD: M.EN_SQD_ASYNC_NOTIFY, T.UC: M.EN_SQD_ASYNC_NOTIFY,
                             T.RC: M.EN_SQD_ASYNC_NOTIFY}),
    (S.SQD, S.RESET): _tr(),
    (S.SQD, S.ERR): _tr(),
    (S.SQD, S.RTS): _tr(opt={T.UD: M.CUR_STATE | M.QKEY,
                             T.UC: M.CUR_STATE | M.ALT_PATH | M.ACCESS_FLAGS | M.PATH_MIG_STATE,
                             T.RC: M.CUR_STATE | M.ALT_PATH | M.ACCESS_FLAGS
                             | M.MIN_RNR_TIMER | M.PATH_MIG_STATE}),
    (S.SQD, S.SQD): _tr(opt={T.UD: M.PKEY_INDEX | M.QKEY,
                             T.UC: M.AV | M.ALT_PATH | M.ACCESS_FLAGS | M.PKEY_INDEX
                             | M.PATH_MIG_STATE,
                             T.RC: M.PORT | M.AV | M.TIMEOUT | M.RETRY_CNT | M.RNR_RETRY
                             | M.MAX_QP_RD_ATOMIC | M.MAX_DEST_RD_ATOMIC | M.ALT_PATH
                             | M.ACCESS_FLAGS | M.PKEY_INDEX | M.MIN_RNR_TIMER
                             | M.PATH_MIG_STATE}),
    (S.SQE, S.RESET): _tr(),
    (S.SQE, S.ERR): _tr(),
    (S.SQE, S.RTS): _tr(opt={T.UD: M.CUR_STATE | M.QKEY, T.UC: M.CUR_STATE | M.ACCESS_FLAGS}),
    (S.ERR, S.RESET): _tr(),
    (S.ERR, S.ERR): _tr(),
}


def ib_modify_qp_is_ok(cur_state: int, next_state: int, qp_type: int, mask: int) -> bool:
    """Whether a QP modify is a legal transition with legal attributes — ``ib_modify_qp_is_ok()``.

    Rules (verbs.c): ``IB_QP_CUR_STATE`` may only be given from RTR, RTS, SQD or SQE; the
    transition must exist in ``qp_state_table``; every required attribute of the transition must
    be in ``mask``; nothing outside required + optional + ``IB_QP_STATE`` may be.

    Args:
        cur_state, next_state: :class:`IbQpState` values.
        qp_type: :class:`IbQpType` value (RC, UC, UD).
        mask: :class:`IbQpAttrMask` bits.
    Context: pure.
    Returns: True if the modify is allowed.
    Raises: ValueError: unknown state or QP type (a caller bug, not a user error).
    Kernel: drivers/infiniband/core/verbs.c, ib_modify_qp_is_ok(), qp_state_table.
    """
    cur = IbQpState(cur_state)
    nxt = IbQpState(next_state)
    qpt = IbQpType(qp_type)
    if mask & M.CUR_STATE and cur not in (S.RTR, S.RTS, S.SQD, S.SQE):
        return False
    if (cur, nxt) not in _QP_STATE_TABLE:
        # every state may go to RESET or ERR (qp_state_table rows list them explicitly)
        if nxt not in (S.RESET, S.ERR):
            return False
        return not mask & ~int(M.STATE)
    tr = _QP_STATE_TABLE[(cur, nxt)]
    req = int(tr.req.get(qpt, 0))
    opt = int(tr.opt.get(qpt, 0))
    if mask & req != req:
        return False
    return not mask & ~(req | opt | int(M.STATE))

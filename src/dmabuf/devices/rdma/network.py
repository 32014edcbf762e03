"""The InfiniBand/RoCE network between NIC ports: LIDs, links and reachability (hardware).

The kernel has no such file: this is the wire. Every port of a bound NIC joins the machine's
subnet (:class:`IbSubnet`, ``machine.state(IbSubnet)``) and gets a LID, as a subnet manager
would assign, and is cabled to the subnet's switch; :meth:`IbSubnet.connect` recables two ports
back to back instead (a point-to-point link between two NIC endpoints). A port can be taken
down (:meth:`IbSubnet.set_port_state`). The HCA asks :meth:`IbSubnet.route` whether a packet
from one port reaches a LID — a request that never arrives is retried until the QP's retry
count is exhausted (``IBV_WC_RETRY_EXC_ERR``). A QP addressing its own port's LID is loopback.

Bytes carried are counted per port (``tx_bytes`` / ``rx_bytes``); timing is the simulator's
business (layer 6).

Locking: one internal lock protects the port tables, held only inside a call.

Kernel: none (the fabric and its subnet manager). Related: include/rdma/ib_verbs.h
(``ib_port_attr.lid``, ``enum ib_port_state``).
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic

__all__ = ["IbPort", "IbSubnet", "PortState"]

#: Port states (``enum ibv_port_state``): the two the model uses.
PortState = int
IBV_PORT_DOWN = 1
IBV_PORT_ACTIVE = 4


@dataclass(eq=False)
class IbPort:
    """One physical port of a NIC.

    Attributes: device, port_num, lid, state (``IBV_PORT_ACTIVE`` 4 / ``IBV_PORT_DOWN`` 1),
    peer (the port it is cabled to back to back, or None: the subnet switch), tx/rx bytes.
    """

    device: RdmaNic
    port_num: int
    lid: int
    state: int = IBV_PORT_ACTIVE
    peer: IbPort | None = None
    tx_bytes: int = 0
    rx_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        st = "ACTIVE" if self.state == IBV_PORT_ACTIVE else "DOWN"
        link = f"<->{self.peer.device.name}:{self.peer.port_num}" if self.peer else "switch"
        return f"<IbPort {self.device.name}:{self.port_num} lid={self.lid} {st} {link}>"


class IbSubnet:
    """The machine's subnet: ports by LID, cabling, port state (see the module docstring)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._by_lid: dict[int, IbPort] = {}
        self._next_lid = 1

    @classmethod
    def of(cls, machine: Machine) -> IbSubnet:
        """The machine's subnet (created on first use).

        Model-only: per-machine subnet lookup.
        """
        return machine.state(cls)

    def add_port(self, device: RdmaNic, port_num: int) -> IbPort:
        """Plug a new port into the switch and assign it the next LID (the subnet manager).

        Model-only: the InfiniBand subnet manager and switch are outside the kernel.
        """
        with self._lock:
            lid = self._next_lid
            self._next_lid += 1
            port = IbPort(device, port_num, lid)
            self._by_lid[lid] = port
        self.machine.trace.emit("ib_port_up", device=device.name, port=port_num, lid=lid)
        return port

    def remove_port(self, port: IbPort) -> None:
        """Unplug a port (device removal).

        Model-only: the InfiniBand fabric is hardware.
        """
        with self._lock:
            self._by_lid.pop(port.lid, None)
            if port.peer is not None:
                port.peer.peer = None
                port.peer = None
            port.state = IBV_PORT_DOWN

    def port(self, lid: int) -> IbPort | None:
        """The port with ``lid``, or None.

        Model-only: subnet lookup by LID (switch forwarding table).
        """
        with self._lock:
            return self._by_lid.get(lid)

    def connect(self, a: IbPort, b: IbPort) -> None:
        """Cable ``a`` and ``b`` back to back (they leave the switch).

        Raises: DmaBufError(EINVAL): the same port twice, or a port not on this subnet.

        Model-only: cabling is hardware.
        """
        with self._lock:
            if a is b or self._by_lid.get(a.lid) is not a or self._by_lid.get(b.lid) is not b:
                raise DmaBufError(errno.EINVAL, "connect two different ports of this subnet")
            for p in (a, b):
                if p.peer is not None:
                    p.peer.peer = None
            a.peer, b.peer = b, a

    def set_port_state(self, port: IbPort, active: bool) -> None:
        """Bring a port up (``ACTIVE``) or down (link loss).

        Model-only: link state is hardware (the kernel sees it as IB_EVENT_PORT_ACTIVE/ERR).
        """
        port.state = IBV_PORT_ACTIVE if active else IBV_PORT_DOWN
        self.machine.trace.emit("ib_port_state", device=port.device.name, port=port.port_num,
                                active=bool(active))

    def route(self, src: IbPort, dlid: int) -> IbPort | None:
        """The port a packet from ``src`` to ``dlid`` reaches, or None (dropped).

        Loopback (``dlid == src.lid``) needs only ``src`` active; otherwise both ports must be
        active and either cabled to each other or both on the switch.

        Model-only: switch forwarding is hardware.
        """
        if src.state != IBV_PORT_ACTIVE:
            return None
        if dlid == src.lid:
            return src
        with self._lock:
            dst = self._by_lid.get(dlid)
        if dst is None or dst.state != IBV_PORT_ACTIVE:
            return None
        if src.peer is dst or (src.peer is None and dst.peer is None):
            return dst
        return None

"""Timing parameters of the fabric model — every hardware figure in one overridable dataclass.

Kernel: none. This module is the performance half of the model, not a kernel file: the costs it
gives are those of hardware (PCIe links, switches, root complexes, memories, NICs) and of the
kernel paths whose *duration* matters to a simulation — ``dma_map_phys()``/``iommu_map()``,
``iommu_iotlb_sync()``, ``dma_buf_invalidate_mappings()``, an mlx5 UMR rewrite, an ODP page fault.

Design
    :class:`TimingParams` is a frozen dataclass: one field per figure, SI units (seconds, bytes,
    bytes/s, dimensionless factors). The defaults come from spec ``kernel-p2p-dma.md`` §6.1/§6.2
    and are listed with their sources in ``docs/timing-model.md``; where the spec gives a range,
    the default is a stated choice inside it. Scenarios override fields with
    :meth:`TimingParams.replace` or :meth:`TimingParams.from_mapping` (the TOML path), which
    validate every value and refuse unknown keys.

    The module also holds the PCIe generation table (:data:`PCIE_GENERATIONS`): transfer rate
    per lane and line-encoding efficiency of each generation, from which
    :func:`dmabuf.sim.fabric.pcie_link` computes a link's payload bandwidth.

Cost functions
    The ``*_cost`` methods turn the per-operation figures into durations for one operation
    (``map_cost(pages, ranges, iommu=...)`` …). They are pure and never block; a simulated
    thread pays them with ``machine.sched.sleep(cost)``, or a :class:`~dmabuf.sim.timing.FlowSpec`
    carries them as set-up time.
"""

from __future__ import annotations

import dataclasses
import errno
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmabuf.errors import DmaBufError

__all__ = [
    "GB",
    "GIB",
    "H100_PCIE_HBM_BANDWIDTH",
    "H100_SXM5_HBM_BANDWIDTH",
    "H200_HBM_BANDWIDTH",
    "HOST_DDR5_12CH_4800_BANDWIDTH",
    "NVME_GEN5_PM1753_BANDWIDTH",
    "PCIE_GENERATIONS",
    "XGMI_BANDWIDTH",
    "PcieGeneration",
    "TimingParams",
]

#: 10^9 bytes: link and memory bandwidths are quoted in decimal gigabytes per second.
GB = 1_000_000_000
#: 2^30 bytes.
GIB = 1 << 30

#: NVIDIA H100 SXM5 HBM3: 3.35 TB/s (spec §6.1, glennklockwood.com/garden/processors/h100).
H100_SXM5_HBM_BANDWIDTH = 3.35e12
#: NVIDIA H100 PCIe HBM2e: "> 2,000 GB/s" (spec §6.1, NVIDIA product brief PB-11133-001_v02).
H100_PCIE_HBM_BANDWIDTH = 2.0e12
#: NVIDIA H200 HBM3e: 4.8 TB/s (spec §6.1, pingdo.net H100 vs H200).
H200_HBM_BANDWIDTH = 4.8e12
#: Host memory of one AMD Zen 4 (Genoa) socket: 12 channels x 64 bit x DDR5-4800 = 460.8 GB/s
#: (theoretical peak; not in spec §6 — Tom's Hardware report of AMD's EDAC patches, 2021-12).
HOST_DDR5_12CH_4800_BANDWIDTH = 460.8e9
#: Samsung PM1753 Gen5 NVMe SSD, rated 14.5 GB/s (spec §6.1, xnvme.io aisio pcie_saturation).
NVME_GEN5_PM1753_BANDWIDTH = 14.5e9
#: AMD inter-socket xGMI, low end of the community figure 192-256 GB/s (spec §6.1).
XGMI_BANDWIDTH = 192e9


@dataclass(frozen=True)
class PcieGeneration:
    """One PCIe generation: raw transfer rate per lane and line-encoding efficiency.

    ``lane_bandwidth`` = ``transfer_rate * encoding / 8`` bytes/s per lane per direction, before
    TLP/DLLP protocol overhead.
    """

    gen: int
    #: Transfers per second per lane (one bit per transfer on the wire; PAM4 Gen6 counts bits).
    transfer_rate: float
    #: Payload bits per wire bit of the line code (8b/10b, 128b/130b, FLIT 242/256).
    encoding: float
    encoding_name: str

    @property
    def lane_bandwidth(self) -> float:
        """Bytes/s per lane per direction after line encoding, before protocol overhead."""
        return self.transfer_rate * self.encoding / 8.0


#: Gen1/2: 2.5/5 GT/s, 8b/10b (PCIe base spec; outside the spec §6 table, given for old
#: devices). Gen3/4/5: 8/16/32 GT/s, 128b/130b — 0.985/1.97/3.94 GB/s per lane, 15.75/31.5/63.0
#: GB/s at x16 (spec §6.1, hpc-notes.pages.dev/reference/pcie). Gen6: 64 GT/s PAM4 with FLIT
#: mode, 242 of every 256 flit bytes carry TLP+DLLP data (FEC and CRC take the rest): 7.5625
#: GB/s per lane, 121.0 GB/s at x16 (spec §6.1 gives "~121 GB/s" at x16, yduf.github.io and
#: geratools.com; its "~7.9 GB/s/lane" is the raw 8 GB/s rounded and disagrees with its own x16
#: figure, which this table reproduces).
PCIE_GENERATIONS: dict[int, PcieGeneration] = {
    1: PcieGeneration(1, 2.5e9, 8 / 10, "8b/10b"),
    2: PcieGeneration(2, 5.0e9, 8 / 10, "8b/10b"),
    3: PcieGeneration(3, 8.0e9, 128 / 130, "128b/130b"),
    4: PcieGeneration(4, 16.0e9, 128 / 130, "128b/130b"),
    5: PcieGeneration(5, 32.0e9, 128 / 130, "128b/130b"),
    6: PcieGeneration(6, 64.0e9, 242 / 256, "PAM4 FLIT 242/256"),
}

_EFFICIENCIES = (
    "protocol_efficiency", "switch_efficiency", "rc_p2p_write_efficiency",
    "rc_p2p_read_efficiency", "rc_memory_efficiency", "cross_socket_efficiency",
    "network_efficiency",
)
_INTS = ("iommu_fq_size", "iommu_page_size")
_BOOLS = ("iommu_enabled", "iommu_strict")


@dataclass(frozen=True)
class TimingParams:
    """Every figure of the timing model; defaults from spec §6 (sources in docs/timing-model.md).

    Efficiencies are factors in (0, 1]; times are seconds; sizes bytes. Build variants with
    :meth:`replace` or :meth:`from_mapping`; both validate.

    Bandwidth factors:

    * ``protocol_efficiency`` (0.89) — share of a PCIe link's encoded bandwidth left for payload
      after TLP headers, framing, LCRC, DLLPs and flow control: measured Gen5 x16 P2P writes
      reach ~56 GB/s of 63, "≈89 %" (spec §6.1, voipmonitor/rtx6kpro pcie-bandwidth.md). Applied
      to every PCIe link's capacity.
    * ``switch_efficiency`` (1.0) — rate ceiling of a flow crossing a PCIe switch, as a fraction
      of its path's narrowest link. Spec §6.2: "BUS_ADDR path = min(link rates along switch
      ports)". The measured switch figure (~54 GB/s, Broadcom PEX890xx) is within the spread of
      the root-complex measurements (53–56.6 GB/s), so the default does not separate them; 0.963
      reproduces 54.0 GB/s exactly.
    * ``rc_p2p_write_efficiency`` (1.0) / ``rc_p2p_read_efficiency`` (0.5) — ceiling of a
      peer-to-peer flow through the root complex (root port to root port, THRU_HOST_BRIDGE).
      Spec §6.2: "Zen4/5: ≈ same as switch for writes; reads and older Intel: much lower — e.g.
      0.3–0.75 factor [uncertain]"; 0.5 is a choice inside that range. Older Intel: 7.1 vs
      9.4–9.5 GB/s (Xeon E5-2650v4, spec §6.1) gives ≈ 0.75.
    * ``rc_memory_efficiency`` (1.0) — ceiling of DMA between a device and host memory through
      the root complex (the ordinary case; no penalty in the spec).
    * ``cross_socket_efficiency`` (0.90) — ceiling when the root complex forwards onto the
      inter-socket link: 50.97 vs 56.57 GB/s cross- vs same-NUMA on dual Turin (spec §6.1 rows
      "cross-socket (xGMI) ~39–51 GB/s"; voipmonitor/rtx6kpro matrix).
    * ``network_efficiency`` (1.0) — payload share of a NIC's line rate. Spec §6.1: "payload
      ~5–10 % lower with RoCE/IB headers [uncertain]"; the default keeps the line rate.

    Latencies (added once per flow, after its last byte leaves the source):

    * ``pcie_link_latency`` (0.0) — per PCIe link traversal (flight + PHY): not separated in any
      source; the measured end-to-end figures are attributed to the bridges below.
    * ``switch_latency`` (115 ns) — per switch crossing: Broadcom PEX89048 port-to-port figure
      quoted by HighPoint ("The Latency War"); not in spec §6.
    * ``rc_latency`` (0.36 µs) — per root-complex crossing: same-NUMA GPU↔GPU P2P latency on
      Turin (spec §6.1, voipmonitor/rtx6kpro topology.md), attributed whole to the root complex.
    * ``interconnect_latency`` (0.08 µs) — per inter-socket link: 0.44 − 0.36 µs cross- minus
      same-NUMA (spec §6.1).
    * ``memory_latency`` / ``network_latency`` (0.0) — per memory / NIC-port link: not modelled.

    IOMMU and DMA-API costs (spec §6.1 "suggested per-operation latency parameters … [all
    uncertain]"; each default is a choice inside the quoted range):

    * ``iommu_enabled`` (True) — whether root complexes translate by default (a flow crossing a
      root complex pays IOMMU costs unless it says otherwise); the spec's default machine has the
      IOMMU on with a lazy DMA domain.
    * ``iommu_strict`` (False) — strict domains sync the IOTLB on every unmap; lazy (flush queue)
      domains amortise one sync over ``iommu_fq_size`` (256) freed IOVAs (drivers/iommu/
      dma-iommu.c, spec §6.1).
    * ``iommu_page_size`` (4096) — IOMMU page of a mapping unless a flow gives its own.
    * ``iommu_map_per_page`` (0.3 µs) — "IOMMU 4 KiB map ≈ 0.1–0.5 µs CPU".
    * ``iommu_map_per_range`` (0.1 µs) — IOVA allocation + page-table walk set-up per range (low
      end of the same range; our choice).
    * ``iommu_unmap_per_page`` (0.3 µs), ``iommu_unmap_per_range`` (0.1 µs) — as map.
    * ``iotlb_sync`` (3 µs) — "IOTLB invalidation + sync ≈ 1–5 µs".
    * ``iotlb_miss_penalty`` (40.96 ns) — effective (not overlapped) DMA stall per IOMMU page
      touched on a translated path: calibrated so a 200 Gb/s (25 GB/s) stream over 4 KiB pages
      loses exactly 20 %, the worst case measured by Farshin et al. (PeerJ CS 2023, spec §6.1);
      2 MiB pages divide it by 512 ("hugepage-backed buffers recover it").
    * ``bus_addr_map_per_range`` (0.0) — a BUS_ADDR mapping is address arithmetic
      (``paddr - bus_offset``); no IOMMU work.
    * ``invalidate_per_attachment`` (3 µs) — importer reaction to
      ``dma_buf_invalidate_mappings()``: one IOTLB invalidation + sync (same range as above).
    * ``remap_per_range`` (1 µs) — importer remap per range: "UMR MTT rewrite ≈ µs-scale".
    * ``odp_fault`` (20 µs) — one HCA ODP page-fault round trip: "tens of µs".
    """

    protocol_efficiency: float = 0.89
    switch_efficiency: float = 1.0
    rc_p2p_write_efficiency: float = 1.0
    rc_p2p_read_efficiency: float = 0.5
    rc_memory_efficiency: float = 1.0
    cross_socket_efficiency: float = 0.90
    network_efficiency: float = 1.0

    pcie_link_latency: float = 0.0
    switch_latency: float = 115e-9
    rc_latency: float = 0.36e-6
    interconnect_latency: float = 0.08e-6
    memory_latency: float = 0.0
    network_latency: float = 0.0

    iommu_enabled: bool = True
    iommu_strict: bool = False
    iommu_fq_size: int = 256
    iommu_page_size: int = 4096
    iommu_map_per_page: float = 0.3e-6
    iommu_map_per_range: float = 0.1e-6
    iommu_unmap_per_page: float = 0.3e-6
    iommu_unmap_per_range: float = 0.1e-6
    iotlb_sync: float = 3e-6
    iotlb_miss_penalty: float = 40.96e-9
    bus_addr_map_per_range: float = 0.0

    invalidate_per_attachment: float = 3e-6
    remap_per_range: float = 1e-6
    odp_fault: float = 20e-6

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _BOOLS:
                if not isinstance(v, bool):
                    raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: must be True "
                                      "or False")
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: must be a number")
            if not math.isfinite(v):
                raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: must be finite")
            if f.name in _EFFICIENCIES:
                if not 0.0 < v <= 1.0:
                    raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: an efficiency "
                                      "is a factor in (0, 1]")
            elif f.name in _INTS:
                if not isinstance(v, int) or v <= 0:
                    raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: must be a "
                                      "positive int")
            elif v < 0:
                raise DmaBufError(errno.EINVAL, f"TimingParams.{f.name}={v!r}: a time cannot be "
                                  "negative")

    # construction ---------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> TimingParams:
        """Return a copy with some fields changed (validated) — no kernel counterpart.

        Args:
            **overrides: field name -> new value.
        Context: pure; never blocks.
        Returns: a new :class:`TimingParams`.
        Raises: DmaBufError(EINVAL) for an unknown field or an invalid value.
        Kernel: none.
        """
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TimingParams:
        """Build parameters from a mapping (a TOML table), defaults for what it omits.

        Args:
            data: field name -> value; integers are accepted for float fields.
        Context: pure; never blocks.
        Returns: a new :class:`TimingParams`.
        Raises: DmaBufError(EINVAL) for an unknown key (the message lists the valid ones) or an
            invalid value.
        Kernel: none.
        """
        if not isinstance(data, Mapping):
            raise DmaBufError(errno.EINVAL, f"timing parameters must be a mapping, not "
                              f"{type(data).__name__}")
        _check_keys(data)
        return cls(**dict(data))

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict — no kernel counterpart.

        Context: pure; never blocks.
        Returns: field name -> value (for reports, ``--json`` and writing back to TOML).
        Raises: nothing.
        Kernel: none.
        """
        return dataclasses.asdict(self)

    # cost functions ---------------------------------------------------------------------------
    def map_cost(self, pages: int, ranges: int = 1, *, iommu: bool) -> float:
        """Time to DMA-map a buffer — ``dma_map_phys()`` / ``dma_iova_link()`` + IOTLB sync.

        Args:
            pages: IOMMU pages covered (>= 0).
            ranges: contiguous ranges (>= 0); one IOVA allocation and page-table walk each.
            iommu: True for an IOVA mapping through the IOMMU; False for a BUS_ADDR (or
                dma-direct) mapping, which is address arithmetic only.
        Context: pure; never blocks (the caller sleeps the returned time).
        Returns: seconds: ``ranges*map_per_range + pages*map_per_page + iotlb_sync`` with the
            IOMMU (nothing when there is nothing to map), ``ranges*bus_addr_map_per_range``
            without.
        Raises: DmaBufError(EINVAL) for negative or non-int counts.
        Kernel: kernel/dma/mapping.c dma_map_phys(); drivers/iommu/dma-iommu.c dma_iova_link(),
            dma_iova_sync() -> iommu_iotlb_sync().
        """
        _check_count("pages", pages)
        _check_count("ranges", ranges)
        if not iommu:
            return ranges * self.bus_addr_map_per_range
        if pages == 0 and ranges == 0:
            return 0.0
        return (ranges * self.iommu_map_per_range + pages * self.iommu_map_per_page
                + self.iotlb_sync)

    def unmap_cost(self, pages: int, ranges: int = 1, *, iommu: bool) -> float:
        """Time to DMA-unmap a buffer — ``dma_unmap_phys()`` / ``dma_iova_destroy()``.

        Strict domains pay one IOTLB sync per unmap; lazy (flush-queue) domains pay
        ``iotlb_sync * ranges / iommu_fq_size``, the amortised share of the batched flush.

        Args:
            pages: IOMMU pages covered (>= 0).
            ranges: ranges (IOVAs) freed (>= 0).
            iommu: as in :meth:`map_cost`.
        Context: pure; never blocks.
        Returns: seconds (0 without the IOMMU).
        Raises: DmaBufError(EINVAL) for negative or non-int counts.
        Kernel: drivers/iommu/dma-iommu.c __iommu_dma_unmap(), iommu_dma_free_iova() (flush
            queue: IOVA_FQ_SIZE 256, IOVA_FQ_TIMEOUT 10 ms).
        """
        _check_count("pages", pages)
        _check_count("ranges", ranges)
        if not iommu or (pages == 0 and ranges == 0):
            return 0.0
        if self.iommu_strict:
            sync = self.iotlb_sync
        else:
            sync = self.iotlb_sync * ranges / self.iommu_fq_size
        return ranges * self.iommu_unmap_per_range + pages * self.iommu_unmap_per_page + sync

    def iotlb_miss_time(self, nbytes: float, page_size: int | None = None) -> float:
        """DMA stall from IOTLB misses for ``nbytes`` on a translated path — the page walk.

        Args:
            nbytes: bytes moved (>= 0).
            page_size: IOMMU page of the mapping (default ``iommu_page_size``).
        Context: pure; never blocks.
        Returns: ``nbytes / page_size * iotlb_miss_penalty`` seconds (a fluid page count).
        Raises: DmaBufError(EINVAL) for negative bytes or a non-positive page size.
        Kernel: none (hardware: the IOMMU's page-table walk on an IOTLB miss).
        """
        if not isinstance(nbytes, int | float) or isinstance(nbytes, bool) or nbytes < 0:
            raise DmaBufError(errno.EINVAL, f"bytes={nbytes!r}: must be a number >= 0")
        ps = self.iommu_page_size if page_size is None else page_size
        _check_page_size(ps)
        return nbytes / ps * self.iotlb_miss_penalty

    def invalidate_cost(self, attachments: int) -> float:
        """Time for importers to react to a move — ``dma_buf_invalidate_mappings()``.

        Args:
            attachments: attachments notified (>= 0).
        Context: pure; never blocks.
        Returns: ``attachments * invalidate_per_attachment`` seconds.
        Raises: DmaBufError(EINVAL) for a negative or non-int count.
        Kernel: drivers/dma-buf/dma-buf.c dma_buf_invalidate_mappings() (formerly
            dma_buf_move_notify()) -> each importer's invalidate_mappings callback.
        """
        _check_count("attachments", attachments)
        return attachments * self.invalidate_per_attachment

    def remap_cost(self, ranges: int) -> float:
        """Time for an importer to remap a moved buffer, e.g. an mlx5 UMR MTT rewrite.

        Args:
            ranges: ranges rewritten (>= 0).
        Context: pure; never blocks.
        Returns: ``ranges * remap_per_range`` seconds (the DMA mapping itself is
            :meth:`map_cost`).
        Raises: DmaBufError(EINVAL) for a negative or non-int count.
        Kernel: drivers/infiniband/hw/mlx5/umr.c mlx5r_umr_update_mr_pas() via
            ib_umem_dmabuf_map_pages().
        """
        _check_count("ranges", ranges)
        return ranges * self.remap_per_range

    def odp_fault_cost(self, faults: int) -> float:
        """Time of ``faults`` HCA on-demand-paging page-fault round trips.

        Args:
            faults: page faults (>= 0).
        Context: pure; never blocks.
        Returns: ``faults * odp_fault`` seconds.
        Raises: DmaBufError(EINVAL) for a negative or non-int count.
        Kernel: drivers/infiniband/hw/mlx5/odp.c mlx5_ib_eqe_pf_action() ->
            pagefault_single_data_segment().
        """
        _check_count("faults", faults)
        return faults * self.odp_fault


def _check_keys(data: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(TimingParams)}
    bad = sorted(str(k) for k in data if k not in names)
    if bad:
        raise DmaBufError(errno.EINVAL, f"unknown timing parameter(s) {bad}; valid names: "
                          f"{sorted(names)}")


def _check_count(what: str, n: object) -> None:
    import numbers

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 0:
        raise DmaBufError(errno.EINVAL, f"{what}={n!r}: must be an int >= 0")


def _check_page_size(ps: object) -> None:
    import numbers

    if isinstance(ps, bool) or not isinstance(ps, numbers.Integral) or int(ps) <= 0:
        raise DmaBufError(errno.EINVAL, f"page_size={ps!r}: must be a positive int (4096, or "
                          "2 MiB for huge pages)")

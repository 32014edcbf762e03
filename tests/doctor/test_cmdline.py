"""dmabuf.doctor.cmdline: next_arg()-style parsing and the ACS/PCI/module findings."""

from __future__ import annotations

from dmabuf.doctor import Finding, Severity
from dmabuf.doctor.cmdline import cmdline_findings, parse_cmdline


def _ids(text: str) -> dict[str, Finding]:
    return {f.id: f for f in cmdline_findings(parse_cmdline(text), "test")}


def test_parse_quotes_init_args_and_names() -> None:
    cl = parse_cmdline('root=/dev/sda1 quiet dyndbg="module nvme +p" iommu=pt '
                       'intel-iommu=on,sm_on -- --init-flag x=y\n')
    assert cl.params == [("root", "/dev/sda1"), ("quiet", None), ("dyndbg", "module nvme +p"),
                         ("iommu", "pt"), ("intel_iommu", "on,sm_on")]
    assert cl.init_args == ["--init-flag", "x=y"]
    assert cl.values("intel_iommu") == ["on", "sm_on"]
    assert cl.get("iommu") == "pt" and cl.has("quiet") and cl.get("quiet") is None
    assert cl.relevant() == {"iommu": "pt", "intel_iommu": "on,sm_on"}


def test_last_occurrence_wins_and_pci_options() -> None:
    cl = parse_cmdline("iommu=off iommu=pt pci=noats,disable_acs_redir=0000:01:00.0;"
                       "0000:02:00.0 pci=nommconf,config_acs=xx11xx@0000:00:02.0")
    assert cl.get("iommu") == "pt"
    assert cl.pci == ["noats", "disable_acs_redir=0000:01:00.0;0000:02:00.0", "nommconf",
                      "config_acs=xx11xx@0000:00:02.0"]
    assert cl.pci_option("disable_acs_redir") == ["0000:01:00.0;0000:02:00.0"]
    assert cl.pci_option("config_acs") == ["xx11xx@0000:00:02.0"]


def test_findings() -> None:
    fs = _ids("pci=disable_acs_redir=0000:01:00.0,nommconf,noats nomodule "
              "pcie_acs_override=downstream,multifunction module_blacklist=nvidia-peermem,floppy "
              "vfio-pci.ids=10de:2330,15b3:101d")
    assert fs["cmdline.line"].severity == Severity.OK
    d = fs["cmdline.disable_acs_redir"]
    assert d.evidence == {"devices": "0000:01:00.0"}
    assert fs["cmdline.nommconf"].severity == Severity.WARN
    assert fs["cmdline.noats"].severity == Severity.INFO
    assert fs["cmdline.nomodule"].severity == Severity.INFO
    assert "out-of-tree" in fs["cmdline.pcie_acs_override"].reason
    bl = fs["cmdline.module_blacklist"]
    assert bl.severity == Severity.WARN
    assert "nvidia-peermem" in bl.reason
    assert fs["cmdline.vfio_pci_ids"].evidence == {
        "ids": ["10de:2330", "15b3:101d"]}


def test_plain_line_and_unknown() -> None:
    fs = _ids("console=ttyS0 quiet")
    assert list(fs) == ["cmdline.line"]
    assert "none about IOMMU, ACS or PCI" in fs["cmdline.line"].title
    f = cmdline_findings(None, "proc/cmdline not found")
    assert [x.id for x in f] == ["cmdline.line"] and f[0].severity == Severity.INFO
    assert parse_cmdline('a="unterminated b').params == [("a", "unterminated b")]

"""Shared data for the signature tests: the built-in catalog and benign scary-word lines."""
# ruff: noqa: E501  (real log lines are long; they are data)

from __future__ import annotations

from functools import cache
from pathlib import Path

from agent.detect.catalog import Catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]

#: real lines that merely contain scary words: none may match any signature
BENIGN = (
    "MDS CPU bug present and SMT on, data leak possible. See https://www.kernel.org/doc/html/latest/admin-guide/hw-vuln/mds.html for more details.",
    "MMIO Stale Data CPU bug present and SMT on, data leak possible. See https://www.kernel.org/doc/html/latest/admin-guide/hw-vuln/processor_mmio_stale_data.html for more details.",
    "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, data leaks possible!",
    "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible via Spectre v2 BHB attacks!",
    "L1TF CPU bug present and SMT on, data leak possible. See CVE-2018-3646 and https://www.kernel.org/doc/html/latest/admin-guide/hw-vuln/l1tf.html for details.",
    "PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug",
    "ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PC00.PEG1.PEGP], AE_NOT_FOUND (20230628/dswload2-162)",
    "ACPI Error: Aborting method \\_SB.PC00.PEG1.PEGP._DSM due to previous error (AE_NOT_FOUND) (20230628/psparse-529)",
    "mce: CPU0: Thermal monitoring enabled (TM1)",
    "EDAC MC: Ver: 3.0.0",
    "EDAC MC0: Giving out device to module skx_edac controller Skylake Socket#0 IMC#0: DEV 0000:3a:0a.0 (INTERRUPT)",
    "ERST: Error Record Serialization Table (ERST) support is initialized.",
    "HEST: Table parsing has been initialized.",
    "GHES: APEI firmware first mode is enabled by APEI bit and WHEA _OSC.",
    "RAS: Correctable Errors collector initialized.",
    "Kernel command line: BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet panic=10 hung_task_panic=0",
    "Kernel is locked down from Kernel configuration; see man kernel_lockdown.7",
    "NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.",
    "watchdog: Disabling watchdog on nohz_full cores by default",
    "rcu: Hierarchical RCU implementation.",
    "rcu: \tRCU CPU stall warnings timeout set to 100 (rcu_cpu_stall_timeout).",
    "EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro. Quota mode: none.",
    "EXT4-fs (sda1): mounted filesystem 6c0a1e9e-5d8a-4f1a-9b8e-2f5f4c3b2a1d ro with ordered data mode. Quota mode: none.",
    "XFS (sdb1): Mounting V5 Filesystem 1b2c3d4e-aaaa-bbbb-cccc-111122223333",
    "SGI XFS with ACLs, security attributes, realtime, quota, no debug enabled",
    "md/raid1:md0: active with 2 out of 2 mirrors",
    "md: md0: resync done.",
    "ata3: SATA link up 6.0 Gbps (SStatus 133 SControl 300)",
    "ata1: SATA link down (SStatus 0 SControl 300)",
    "sd 2:0:0:0: [sdb] Attached SCSI disk",
    "nvme nvme0: 8/0/0 default/read/poll queues",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "nf_conntrack: default automatic helper assignment has been turned off for security reasons and CT-based firewall rule not found. Use the iptables CT target to attach helpers instead.",
    "TCP: Hash tables configured (established 524288 bind 65536)",
    "clocksource: Switched to clocksource tsc",
    "clocksource: tsc: mask: 0xffffffffffffffff max_cycles: 0x2577f2a6a50, max_idle_ns: 440795221060 ns",
    "tsc: Refined TSC clocksource calibration: 2593.906 MHz",
    "NFSD: Using nfsdcld client tracking operations.",
    "NFS: Registering the id_resolver key type",
    "libceph: loaded (mon/osd proto 15/24)",
    "CIFS: Attempting to mount \\\\fs1\\share",
    "oom_reaper: reaped process 1234 (dovecot), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
    "systemd[1]: Started Userspace Out-Of-Memory (OOM) Killer.",
    "traps: nginx[1234] general protection fault ip:7f1c2b0e5a1d sp:7ffd6c3c9a30 error:0 in libc.so.6[7f1c2b08d000+155000]",
    "Oct 20 03:18:44 mx1 dovecot: imap-login: Login: user=<alice>, method=PLAIN, rip=203.0.113.5, lip=192.0.2.10, mpid=1234, TLS, session=<abc123>",
    "Oct 20 03:18:44 mx1 postfix/smtp[2345]: 4F0A21234: to=<bob@example.org>, relay=mx.example.org[192.0.2.25]:25, delay=0.5, delays=0.01/0/0.2/0.3, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
    "Oct 20 03:18:44 mx1 postfix/qmgr[812]: 4F0A21234: removed",
    "Oct 20 03:18:44 mx1 postfix/smtpd[123]: disconnect from unknown[203.0.113.9] ehlo=1 auth=0/1 quit=1 commands=2/3",
)


@cache
def builtin() -> Catalog:
    catalog, errors = load_catalog(None)
    assert errors == [], errors
    return catalog


#: a valid site signature (user file); tests break it one field at a time
GOOD = """
[[signature]]
id = "site.nas-gone"
problem = "nfs-not-responding"
regex = 'nasd: export (?P<export>\\S+) vanished'
source = "kmsg"
severity = "error"
subject = "export"
description = "A site-specific storage message."
reference = "site runbook 12"
examples = [
  { line = "nasd: export /srv/mail vanished", subject = "/srv/mail" },
  { line = "nasd: export /srv/x vanished", subject = "/srv/x" },
]
counter_examples = ["nasd: export /srv/mail mounted"]
"""

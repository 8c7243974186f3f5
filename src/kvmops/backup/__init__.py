"""Backups: three engines on one run skeleton.

* :mod:`~kvmops.backup.run` -- the run every engine shares: per-VM lock, signals (Ctrl-C
  and ``backup cancel`` end in the one cancel error), events, clean-up, the manifest;
* :mod:`~kvmops.backup.plan` -- full, incremental or differential per repository;
* :mod:`~kvmops.backup.engine` -- running libvirt VMs (libvirt's backup API, through
  :mod:`kvmops.host.backupjobs`); :mod:`~kvmops.backup.offline` -- shut-off ones
  (qemu-img); :mod:`~kvmops.backup.qmp_engine` -- a QEMU started by hand (raw QMP);
* :mod:`~kvmops.backup.checkpoints` -- libvirt checkpoints owned per repository;
  :mod:`~kvmops.backup.files` -- the finished files (links, compression, checksums);
* repository, manifests, restore, retention, keys, jobs: the rest.
"""

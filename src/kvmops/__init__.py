"""kvmops: run and operate KVM/QEMU virtual machines safely."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kvmops")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]

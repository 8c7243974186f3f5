"""kvmops: run and operate KVM/QEMU virtual machines safely."""

# Static, and the one source of the version (pyproject reads it): asking
# importlib.metadata would cost every ``kvmops`` command ~20 ms.
__version__ = "0.1.0"

__all__ = ["__version__"]

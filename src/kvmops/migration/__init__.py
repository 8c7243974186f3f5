"""Moving VMs between hosts: the preflight's rules, placement, and the shared records
of live and cold migration (pure logic; libvirt calls live in kvmops.host)."""

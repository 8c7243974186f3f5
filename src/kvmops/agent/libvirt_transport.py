"""Guest-agent commands through libvirt (``virDomainQemuAgentCommand``).

The libvirt call and its error translation live in :class:`kvmops.host.domain.Domain`;
this adds the checks every command of a libvirt VM's agent makes first.
"""

from __future__ import annotations

from typing import Any

from kvmops.errors import AgentNotConfiguredError, StateError
from kvmops.host.domain import Domain
from kvmops.vm.domxml import has_agent_channel


def agent_configured(domain: Domain) -> bool:
    """True when the domain XML has the qemu-ga virtio-serial channel."""
    return has_agent_channel(Domain.of(domain).xml())


def agent_command(domain: Domain, command: str,
                  arguments: dict[str, Any] | None = None, *, timeout: int = 10) -> Any:
    """Run one agent command and return its ``return`` value, or raise a GuestAgentError."""
    domain = Domain.of(domain)
    name = domain.name
    if not domain.is_active():
        raise StateError(f"VM '{name}' is not running: its guest agent cannot answer",
                         actual="shut off", required="running",
                         hint=f"start it with 'kvmops vm start {name}'")
    if not agent_configured(domain):
        raise AgentNotConfiguredError(
            f"VM '{name}' has no guest agent channel in its XML",
            hint="add a <channel type='unix'> with target name org.qemu.guest_agent.0",
        )
    return domain.agent_command(command, arguments, timeout=timeout)

"""Guest-agent commands through libvirt (``virDomainQemuAgentCommand``)."""

from __future__ import annotations

import json
from typing import Any

import libvirt
import libvirt_qemu

from kvmops.errors import (
    AgentNotConfiguredError,
    AgentTimeoutError,
    AgentUnavailableError,
    GuestAgentError,
    StateError,
)

_UNRESPONSIVE = {getattr(libvirt, "VIR_ERR_AGENT_UNRESPONSIVE", 86),
                 getattr(libvirt, "VIR_ERR_AGENT_UNSYNCED", 97)}
_TIMEOUT = {getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", 104)}


def agent_configured(domain: libvirt.virDomain) -> bool:
    """True when the domain XML has the qemu-ga virtio-serial channel."""
    return "org.qemu.guest_agent.0" in domain.XMLDesc(0)


def agent_command(domain: libvirt.virDomain, command: str,
                  arguments: dict[str, Any] | None = None, *, timeout: int = 10) -> Any:
    """Run one agent command and return its ``return`` value, or raise a GuestAgentError."""
    name = domain.name()
    if not domain.isActive():
        raise StateError(f"VM '{name}' is not running: its guest agent cannot answer",
                         actual="shut off", required="running",
                         hint=f"start it with 'kvmops vm start {name}'")
    if not agent_configured(domain):
        raise AgentNotConfiguredError(
            f"VM '{name}' has no guest agent channel in its XML",
            hint="add a <channel type='unix'> with target name org.qemu.guest_agent.0",
        )
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    try:
        reply = libvirt_qemu.qemuAgentCommand(domain, json.dumps(request), timeout, 0)
    except libvirt.libvirtError as err:
        raise translate_agent_error(err, name, command) from err
    return json.loads(reply).get("return")


def translate_agent_error(err: libvirt.libvirtError, vm: str, command: str) -> GuestAgentError:
    """libvirt's agent errors: channel state by error code, guest errors by the agent's desc."""
    from kvmops.agent.channel import classify_error, libvirt_desc

    code = err.get_error_code()
    text = (err.get_error_message() or str(err)).strip()
    desc = libvirt_desc(text)
    from_guest = desc != text  # libvirt wrapped the agent's own error reply
    if code in _UNRESPONSIVE or (not from_guest and (
            "not connected" in text or "not responding" in text or "disappeared" in text
            or (code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in text))):
        return AgentUnavailableError(
            f"guest agent of VM '{vm}' is not answering ({text})",
            hint="the guest may still be booting, or qemu-ga is not installed/running in it",
        )
    if code in _TIMEOUT or (not from_guest and "timed out" in text.lower()):
        return AgentTimeoutError(f"guest agent of VM '{vm}' did not answer '{command}' in time")
    return classify_error(f"VM '{vm}'", command, None, desc)

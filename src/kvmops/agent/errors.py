"""Guest-agent error replies as kvmops errors (shared by every agent transport)."""

from __future__ import annotations

from kvmops.errors import AgentCommandDisabledError, GuestAgentError, GuestCommandError

_DISABLED_HINT = ("enable it in the guest: remove it from qemu-ga's --block-rpcs "
                  "(BLACKLIST_RPC in /etc/sysconfig/qemu-ga or the unit file) and restart qemu-ga")


def classify_error(target: str, command: str, error_class: str | None, desc: str
                   ) -> GuestAgentError:
    """Map an agent error reply (class + desc) to the precise GuestAgentError."""
    desc = desc.strip()
    if "has been disabled" in desc or error_class == "CommandDisabled":
        return AgentCommandDisabledError(
            f"command '{command}' is disabled in the guest agent of {target}",
            hint=_DISABLED_HINT)
    if error_class == "CommandNotFound":
        return GuestCommandError(
            f"the guest agent of {target} does not know '{command}' ({desc})",
            hint="the guest's qemu-ga is probably too old for this operation")
    return GuestCommandError(f"guest agent of {target} failed '{command}': {desc}")

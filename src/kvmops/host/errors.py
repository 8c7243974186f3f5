"""The one place where libvirt errors become kvmops errors.

Errors are sorted by libvirt's error *code* (``err.get_error_code()``) and domain,
never by their text. The only texts read are the guest agent's own ``desc``
inside libvirt's "unable to execute QEMU agent command" wrapper (the guest's
words, passed on to the user) and, for libvirt versions whose agent errors all
carry a generic code, the channel-state phrases documented in
:func:`translate_agent_error`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from kvmops.agent.errors import classify_error
from kvmops.errors import (
    AgentTimeoutError,
    AgentUnavailableError,
    AlreadyExistsError,
    GuestAgentError,
    HostUnavailableError,
    HypervisorError,
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    UnsupportedError,
    ValidationError,
)

T = TypeVar("T")

# libvirt prints every error to stderr by default; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

LibvirtError = libvirt.libvirtError

NO_DOMAIN = libvirt.VIR_ERR_NO_DOMAIN
NO_SNAPSHOT = libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT
NO_CHECKPOINT = getattr(libvirt, "VIR_ERR_NO_DOMAIN_CHECKPOINT", 103)
OPERATION_INVALID = libvirt.VIR_ERR_OPERATION_INVALID
BLOCK_COPY_ACTIVE = libvirt.VIR_ERR_BLOCK_COPY_ACTIVE
AGENT_UNRESPONSIVE = {getattr(libvirt, "VIR_ERR_AGENT_UNRESPONSIVE", 86),
                      getattr(libvirt, "VIR_ERR_AGENT_UNSYNCED", 97)}
AGENT_TIMEOUT = {getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", 104),
                 libvirt.VIR_ERR_OPERATION_TIMEOUT}
AGENT_CODES = AGENT_UNRESPONSIVE | AGENT_TIMEOUT | {
    getattr(libvirt, "VIR_ERR_AGENT_COMMAND_FAILED", 105)}

_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    NO_CHECKPOINT,
    getattr(libvirt, "VIR_ERR_NO_DOMAIN_BACKUP", -1002),
}
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                      libvirt.VIR_ERR_CONFIG_UNSUPPORTED}
_INVALID_CODES = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_INVALID_ARG,
                  libvirt.VIR_ERR_XML_DETAIL}
_EXISTS_CODES = {libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_NETWORK_EXIST,
                 libvirt.VIR_ERR_STORAGE_VOL_EXIST}
_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC,
                     libvirt.VIR_ERR_AUTH_FAILED}
# A failed system call is the connection only when the RPC layer made it ("End of file
# while reading data", "Cannot write data: Broken pipe"); libvirtd's own failed calls
# (adding a tap to a bridge, a tc rule) come from other domains and are plain errors.
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}


UNREADABLE_ERROR = ("libvirt reported an error whose text is not valid UTF-8 (binary output "
                    "from QEMU); see the VM's log under /var/log/libvirt/qemu/")

AGENT_HINT = "the guest may still be booting, or qemu-ga is not installed/running in it"

LOST_HINT = ("libvirtd stopped or restarted; kvmops cleaned up what it could, and the next "
             "run of the same command cleans up the rest: retry once libvirtd is back")


def is_undecodable_error(err: BaseException) -> bool:
    """libvirt-python raises SystemError when an error message is not UTF-8.

    QEMU can copy raw bytes of a corrupt state file into its message; the
    binding then fails to build the libvirtError and Python reports a
    SystemError whose context is the UnicodeDecodeError.
    """
    if isinstance(err, UnicodeDecodeError):
        return True
    return isinstance(err, SystemError) and isinstance(
        err.__cause__ or err.__context__, UnicodeDecodeError)


def error_text(err: libvirt.libvirtError) -> str:
    """libvirt's message of an error (for the user, never to sort it)."""
    return str(err.get_error_message() or str(err)).strip()


def error_code(err: libvirt.libvirtError) -> int:
    return int(err.get_error_code() or 0)


def connection_lost(err: libvirt.libvirtError) -> bool:
    """The error is the connection to libvirtd going away (a restart, a crash)."""
    return (err.get_error_code() in _CONNECTION_CODES
            or err.get_error_domain() in _CONNECTION_DOMAINS)


def translate(err: libvirt.libvirtError, what: str) -> KvmopsError:
    """Map a libvirtError to our hierarchy; ``what`` names the action and object."""
    code = err.get_error_code()
    text = error_text(err)
    message = f"{what}: {text}"
    if connection_lost(err):
        return HostUnavailableError(f"{what}: lost the connection to libvirtd ({text})",
                                    hint=LOST_HINT)
    if code in _NOT_FOUND_CODES:
        return NotFoundError(message)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return StateError(message)
    if code in _UNSUPPORTED_CODES:
        return UnsupportedError(message)
    if code in _INVALID_CODES:
        return ValidationError(message)
    if code in _EXISTS_CODES:
        return AlreadyExistsError(message)
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return OperationTimeoutError(
            message, hint="another operation holds the VM (a backup, a snapshot, a "
                          "migration?); retry once it has ended")
    if code in AGENT_UNRESPONSIVE:
        return AgentUnavailableError(message, hint=AGENT_HINT)
    return HypervisorError(message, code=code)


def call(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one libvirt call, translating its error (``what`` describes the action)."""
    try:
        return fn(*args)
    except libvirt.libvirtError as err:
        raise translate(err, what) from err
    except (SystemError, UnicodeDecodeError) as err:
        if not is_undecodable_error(err):
            raise
        raise HypervisorError(f"{what}: {UNREADABLE_ERROR}") from err


# ------------------------------------------------------------------ guest agent
_DESC = re.compile(r"unable to execute QEMU agent command '[^']*':\s*(?P<desc>.*)$", re.S)


def libvirt_desc(text: str) -> str:
    """The agent's own ``desc`` inside a libvirt error message, when it is there."""
    match = _DESC.search(text)
    return match.group("desc").strip() if match else text.strip()


def translate_agent_error(err: libvirt.libvirtError, vm: str, command: str) -> GuestAgentError:
    """libvirt's agent errors: channel state by error code, guest errors by the agent's desc.

    libvirt 9.0 reports a channel that is not connected (yet) with the generic
    VIR_ERR_OPERATION_INVALID or VIR_ERR_INTERNAL_ERROR; when the message is not the
    agent's own reply, those phrases are libvirt's fixed channel-state texts.
    """
    code = err.get_error_code()
    text = error_text(err)
    desc = libvirt_desc(text)
    from_guest = desc != text  # libvirt wrapped the agent's own error reply
    if code in AGENT_UNRESPONSIVE or (not from_guest and (
            "not connected" in text or "not responding" in text or "disappeared" in text
            or (code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in text))):
        return AgentUnavailableError(f"guest agent of VM '{vm}' is not answering ({text})",
                                     hint=AGENT_HINT)
    if code in AGENT_TIMEOUT or (not from_guest and "timed out" in text.lower()):
        return AgentTimeoutError(f"guest agent of VM '{vm}' did not answer '{command}' in time")
    return classify_error(f"VM '{vm}'", command, None, desc)

"""CPU compatibility for a live migration, from libvirt's domain capabilities XML.

A running guest keeps the CPU it booted with: the target must be able to give it the same
model and features, or QEMU refuses the incoming migration after the transfer started
("guest CPU doesn't match specification: missing features"). libvirt's
``virConnectCompareHypervisorCPU`` on the target is the authority (kvmops asks it when
the target answers); the pure check here reads what the target's domain capabilities
(``virsh domcapabilities``) say -- which models are usable, which features its host model
disables -- so the refusal can name the model and features, and the remedy can name a
model both hosts run (:func:`suggest_baseline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

__all__ = ["DomainCpu", "HostCpu", "cpu_problems", "host_cpu", "host_model_xml",
           "parse_domain_cpu", "suggest_baseline"]

#: Named models from newest to oldest, for a baseline both hosts run; the first found
#: usable on both is suggested (then any model both list as usable).
_PREFERENCE = (
    "x86-64-v4", "x86-64-v3", "Sapphire Rapids", "Icelake-Server", "Cascadelake-Server",
    "Skylake-Server", "Skylake-Client", "Broadwell", "Haswell", "IvyBridge", "SandyBridge",
    "Westmere", "Nehalem", "Penryn", "Conroe", "EPYC-Genoa", "EPYC-Milan", "EPYC-Rome",
    "EPYC", "Opteron_G5", "Opteron_G4", "Opteron_G3", "Opteron_G2", "Opteron_G1",
    "x86-64-v2", "qemu64", "kvm64",
)
_REQUIRED = ("require", "force")


def _parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(xml.encode(), parser)


@dataclass
class DomainCpu:
    """A VM's ``<cpu>``: mode (custom, host-model, host-passthrough, maximum), model and
    its features by policy (require, force, disable, forbid, optional)."""

    mode: str
    model: str | None = None
    features: dict[str, str] = field(default_factory=dict)
    xml: str | None = None  # the <cpu> element (for libvirt's compare)

    @property
    def required(self) -> list[str]:
        return sorted(n for n, p in self.features.items() if p in _REQUIRED)


@dataclass
class HostCpu:
    """What a host's domain capabilities offer: its host model (model, vendor and feature
    policies relative to it) and the named models with their usability."""

    host_model: str | None
    vendor: str | None
    features: dict[str, str]  # host-model features: require / disable
    models: dict[str, bool]  # custom-mode models: usable?
    blockers: dict[str, list[str]]  # model -> features the host lacks (newer libvirt)
    passthrough: bool


def parse_domain_cpu(domain_xml: str) -> DomainCpu | None:
    """The ``<cpu>`` of a domain XML (None: the VM has none and runs QEMU's default
    model, which every host offers)."""
    cpu = _parse(domain_xml).find("cpu")
    if cpu is None:
        return None
    mode = cpu.get("mode") or ("custom" if cpu.find("model") is not None else "")
    if not mode:  # topology / NUMA only
        return None
    model = cpu.findtext("model")
    features = {f.get("name", ""): f.get("policy", "require") for f in cpu.findall("feature")}
    return DomainCpu(mode=mode, model=model.strip() if model else None,
                     features={k: v for k, v in features.items() if k},
                     xml=etree.tostring(cpu, encoding="unicode"))


def host_cpu(domcaps_xml: str) -> HostCpu:
    """The CPU part of a host's domain capabilities."""
    root = _parse(domcaps_xml)
    hm = root.find("cpu/mode[@name='host-model']")
    model = vendor = None
    features: dict[str, str] = {}
    if hm is not None and hm.get("supported") == "yes":
        model = (hm.findtext("model") or "").strip() or None
        vendor = (hm.findtext("vendor") or "").strip() or None
        features = {f.get("name", ""): f.get("policy", "require")
                    for f in hm.findall("feature")}
    custom = root.find("cpu/mode[@name='custom']")
    models: dict[str, bool] = {}
    blockers: dict[str, list[str]] = {}
    if custom is not None and custom.get("supported") == "yes":
        for m in custom.findall("model"):
            name = (m.text or "").strip()
            if name:
                models[name] = m.get("usable") == "yes"
        for b in custom.findall("blockers"):
            blockers[b.get("model", "")] = [f.get("name", "") for f in b.findall("feature")]
    pt = root.find("cpu/mode[@name='host-passthrough']")
    return HostCpu(host_model=model, vendor=vendor, features=features, models=models,
                   blockers=blockers, passthrough=pt is not None and pt.get("supported") == "yes")


def cpu_problems(cpu: DomainCpu, target: HostCpu) -> list[str]:
    """Why the target cannot run a guest with ``cpu`` (empty: nothing the capabilities
    show). host-passthrough and maximum are not judged here (they take the host's own
    CPU: a migration needs identical hosts, which only libvirt's compare can tell)."""
    problems: list[str] = []
    if cpu.mode not in ("custom", "host-model"):
        return problems
    if cpu.model and target.models:  # no custom-mode list: libvirt's compare decides
        if cpu.model not in target.models:
            problems.append(f"CPU model '{cpu.model}' is unknown there")
        elif not target.models[cpu.model]:
            missing = target.blockers.get(cpu.model)
            problems.append(f"CPU model '{cpu.model}' is not usable there"
                            + (f" (missing {', '.join(missing)})" if missing else ""))
    disabled = [f for f in cpu.required if target.features.get(f) in ("disable", "forbid")]
    if disabled:
        problems.append(f"feature(s) {', '.join(disabled)} required but not offered")
    return problems


def host_model_xml(host: HostCpu) -> str | None:
    """A host's host-model CPU as a ``<cpu>`` definition (the input of libvirt's
    ``virConnectBaselineHypervisorCPU``)."""
    if host.host_model is None:
        return None
    cpu = etree.Element("cpu", mode="custom", match="exact")
    etree.SubElement(cpu, "model", fallback="forbid").text = host.host_model
    if host.vendor:
        etree.SubElement(cpu, "vendor").text = host.vendor
    for name, policy in host.features.items():
        etree.SubElement(cpu, "feature", policy=policy, name=name)
    return etree.tostring(cpu, encoding="unicode")


def suggest_baseline(source: HostCpu, target: HostCpu) -> str | None:
    """A named CPU model both hosts list as usable (newest first; None: none common)."""
    common = {m for m, ok in source.models.items() if ok and target.models.get(m)}
    for name in _PREFERENCE:
        if name in common:
            return name
    ordered = [m for m in target.models if m in common]
    return ordered[0] if ordered else None

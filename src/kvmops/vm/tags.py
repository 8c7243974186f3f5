"""VM tags: short names a VM carries (``web``, ``nightly``) so that one backup schedule
covers every VM with a tag. Stored in the domain's ``<metadata>`` as kvmops' own tags
element (a namespace of its own, next to the owned-files record), so they live and move
with the definition and need no database."""

from __future__ import annotations

import re

from lxml import etree

from kvmops.errors import ValidationError
from kvmops.host.domain import Domain

TAGS_NS = "https://kvmops.dev/xmlns/tags/1"
TAGS_KEY = "kvmopstags"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise ValidationError(f"'{tag}' is not a tag",
                              hint="letters, digits, '.', '_' and '-', at most 64")
    return tag


def parse_tags(domain_xml: str) -> list[str]:
    """The tags recorded in a domain definition, sorted."""
    root = etree.fromstring(domain_xml.encode(),
                            parser=etree.XMLParser(resolve_entities=False, no_network=True))
    found = {el.get("name") or "" for el in
             root.iterfind(f"metadata/{{{TAGS_NS}}}tags/{{{TAGS_NS}}}tag")}
    return sorted(t for t in found if _TAG.match(t))


def tags_xml(tags: list[str]) -> str:
    """The element without its namespace, as libvirt's setMetadata wants it."""
    el = etree.Element("tags")
    for tag in sorted(set(tags)):
        etree.SubElement(el, "tag", name=tag)
    return etree.tostring(el, encoding="unicode")


def get_tags(domain: Domain) -> list[str]:
    return parse_tags(Domain.of(domain).config_xml())


def set_tags(domain: Domain, tags: list[str]) -> None:
    domain = Domain.of(domain)
    domain.set_metadata(TAGS_KEY, TAGS_NS, tags_xml(tags) if tags else None,
                        what=f"recording the tags of VM '{domain.name}'")

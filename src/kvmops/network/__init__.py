"""libvirt virtual networks: the typed network model and its XML (no libvirt here)."""

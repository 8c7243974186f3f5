"""Storage pools and volumes: typed specs, their libvirt XML, and the XML read back."""

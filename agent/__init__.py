"""nodewarden: health agent with guarded remediation for mail and storage hosts."""

"""Audit: IHE BALP AuditEvents for every interaction, the append-only audit store with its hash
chain, and ITI-20 export to an Audit Record Repository over syslog (issue 5; docs/security.md)."""

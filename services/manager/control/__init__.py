"""The manager's control side: clusters and their config, jobs, users, roles, personal
access tokens, tenants and the audit trail. ``service`` wires it into the manager; the
other modules stay importable on their own."""

-- tower-nat key store, version 1: tenants with their plan, and API keys by SHA-256 hash.
CREATE TABLE IF NOT EXISTS nat_tenants (
    id         TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,
    overrides  JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS nat_keys (
    hash         BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL REFERENCES nat_tenants (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS nat_keys_tenant ON nat_keys (tenant_id);

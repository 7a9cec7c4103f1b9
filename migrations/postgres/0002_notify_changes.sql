-- tower-nat key store, version 2: every change to a key or a tenant that a cache may hold is
-- announced on the channel `nat_key_changes`, whoever makes it (another instance, the CLI,
-- plain SQL), so every instance's cache forgets it within a second.
--
-- Payloads: `key:<hash in hex>` for a key inserted, revoked, re-dated or deleted;
-- `tenant:<id>` for a tenant whose plan or limits changed, or which was deleted. Writes of
-- `last_used_at` alone announce nothing (they are not in the triggers' column lists).
CREATE OR REPLACE FUNCTION nat_announce_change() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'nat_keys' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('nat_key_changes', 'key:' || encode(OLD.hash, 'hex'));
        ELSE
            PERFORM pg_notify('nat_key_changes', 'key:' || encode(NEW.hash, 'hex'));
            IF TG_OP = 'UPDATE' AND OLD.hash <> NEW.hash THEN
                PERFORM pg_notify('nat_key_changes', 'key:' || encode(OLD.hash, 'hex'));
            END IF;
        END IF;
    ELSE
        PERFORM pg_notify('nat_key_changes', 'tenant:' || OLD.id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS nat_keys_announce ON nat_keys;
CREATE TRIGGER nat_keys_announce
    AFTER INSERT OR DELETE OR UPDATE OF hash, tenant_id, expires_at, revoked_at ON nat_keys
    FOR EACH ROW EXECUTE FUNCTION nat_announce_change();

DROP TRIGGER IF EXISTS nat_tenants_announce ON nat_tenants;
CREATE TRIGGER nat_tenants_announce
    AFTER DELETE OR UPDATE OF id, plan, overrides ON nat_tenants
    FOR EACH ROW EXECUTE FUNCTION nat_announce_change();

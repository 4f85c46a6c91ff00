-- pgveil policy catalog, version 2: segregation of duties and an audit trail of changes.

-- Roles that must never be held together by one user (first seed: segregation of duties).
CREATE TABLE pgveil.role_conflicts (
    role_a text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    role_b text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    reason text NOT NULL DEFAULT '',
    PRIMARY KEY (role_a, role_b),
    CONSTRAINT conflict_needs_two_roles CHECK (role_a <> role_b)
);

CREATE FUNCTION pgveil.check_role_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE other text;
BEGIN
    SELECT a.role INTO other
    FROM pgveil.assignments a
    JOIN pgveil.role_conflicts c
      ON (c.role_a = NEW.role AND c.role_b = a.role) OR (c.role_b = NEW.role AND c.role_a = a.role)
    WHERE a.id IS DISTINCT FROM NEW.id
      AND ((NEW.user_name IS NOT NULL AND (a.user_name = NEW.user_name
              OR a.group_name IN (SELECT group_name FROM pgveil.group_members WHERE user_name = NEW.user_name)))
        OR (NEW.group_name IS NOT NULL AND (a.group_name = NEW.group_name
              OR a.user_name IN (SELECT user_name FROM pgveil.group_members WHERE group_name = NEW.group_name))))
    LIMIT 1;
    IF other IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" conflicts with role "%" already held (segregation of duties)', NEW.role, other
            USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER role_conflict BEFORE INSERT OR UPDATE OF role, user_name, group_name ON pgveil.assignments
    FOR EACH ROW EXECUTE FUNCTION pgveil.check_role_conflict();

-- Audit trail: every change to the catalog, who made it (database user and, through pgveil,
-- application_name) and when.
CREATE TABLE pgveil.audit_log (
    id          bigserial PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    db_user     text NOT NULL DEFAULT current_user,
    application text DEFAULT current_setting('application_name', true),
    table_name  text NOT NULL,
    operation   text NOT NULL,
    old_row     jsonb,
    new_row     jsonb
);

CREATE FUNCTION pgveil.audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgveil.audit_log (table_name, operation, old_row, new_row)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) - 'password_verifier' END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) - 'password_verifier' END);
    RETURN NULL;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['departments', 'teams', 'roles', 'users', 'user_teams', 'groups',
        'group_members', 'role_system_permissions', 'objects', 'permissions', 'data_scopes',
        'field_permissions', 'assignments', 'safe_functions', 'role_conflicts'] LOOP
        EXECUTE format('CREATE TRIGGER audit_change AFTER INSERT OR UPDATE OR DELETE ON pgveil.%I
                        FOR EACH ROW EXECUTE FUNCTION pgveil.audit_change()', t);
    END LOOP;
    EXECUTE 'CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgveil.role_conflicts
             FOR EACH STATEMENT EXECUTE FUNCTION pgveil.notify_change()';
END $$;

-- pgveil policy catalog, version 1.
-- Every table rejects invalid policy at write time; every change notifies pgveil_policy.

CREATE TABLE pgveil.departments (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    name        text NOT NULL,
    parent_id   text REFERENCES pgveil.departments(id) ON UPDATE CASCADE,
    CONSTRAINT department_not_own_parent CHECK (parent_id IS DISTINCT FROM id)
);

CREATE TABLE pgveil.teams (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    name          text NOT NULL,
    department_id text REFERENCES pgveil.departments(id) ON UPDATE CASCADE
);

CREATE TABLE pgveil.roles (
    name            text PRIMARY KEY CHECK (name ~ '^[^\s].{0,62}$'),
    kind            text NOT NULL DEFAULT 'business' CHECK (kind IN ('management', 'business')),
    description     text NOT NULL DEFAULT '',
    parent_role     text REFERENCES pgveil.roles(name) ON UPDATE CASCADE ON DELETE SET NULL,
    builtin         boolean NOT NULL DEFAULT false,
    unrestricted    boolean NOT NULL DEFAULT false,
    bulk_operations boolean NOT NULL DEFAULT true,
    bulk_threshold  integer NOT NULL DEFAULT 100 CHECK (bulk_threshold >= 1),
    data_export     boolean NOT NULL DEFAULT true,
    max_rows        bigint CHECK (max_rows IS NULL OR max_rows > 0),
    CONSTRAINT role_not_own_parent CHECK (parent_role IS DISTINCT FROM name)
);

CREATE TABLE pgveil.users (
    name                   text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,63}$'),
    owner_value            text NOT NULL,
    department_id          text REFERENCES pgveil.departments(id) ON UPDATE CASCADE,
    approval_department_id text REFERENCES pgveil.departments(id) ON UPDATE CASCADE,
    active                 boolean NOT NULL DEFAULT true,
    primary_role           text REFERENCES pgveil.roles(name) ON UPDATE CASCADE ON DELETE SET NULL,
    password_verifier      text CONSTRAINT password_is_a_scram_verifier CHECK (
        password_verifier IS NULL
        OR password_verifier ~ '^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$')
);

CREATE TABLE pgveil.user_teams (
    user_name text REFERENCES pgveil.users(name) ON DELETE CASCADE ON UPDATE CASCADE,
    team_id   text REFERENCES pgveil.teams(id) ON DELETE CASCADE ON UPDATE CASCADE,
    PRIMARY KEY (user_name, team_id)
);

CREATE TABLE pgveil.groups (
    name text PRIMARY KEY CHECK (name ~ '^[^\s].{0,62}$')
);

CREATE TABLE pgveil.group_members (
    group_name text REFERENCES pgveil.groups(name) ON DELETE CASCADE ON UPDATE CASCADE,
    user_name  text REFERENCES pgveil.users(name) ON DELETE CASCADE ON UPDATE CASCADE,
    PRIMARY KEY (group_name, user_name)
);

CREATE TABLE pgveil.role_system_permissions (
    role       text REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    permission text CHECK (permission IN ('manage_users', 'manage_roles', 'manage_policies',
                                          'manage_settings', 'read_audit', 'manage_billing')),
    PRIMARY KEY (role, permission)
);

-- Protected objects: tables (or views declared safe) and how their records relate to people.
CREATE TABLE pgveil.objects (
    name              text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    table_schema      text NOT NULL DEFAULT 'public',
    table_name        text NOT NULL,
    primary_key       text NOT NULL DEFAULT 'id',
    owner_column      text,
    department_column text,
    team_column       text,
    parent_object     text REFERENCES pgveil.objects(name) ON UPDATE CASCADE,
    parent_column     text,
    UNIQUE (table_schema, table_name),
    CONSTRAINT parent_needs_column CHECK ((parent_object IS NULL) = (parent_column IS NULL)),
    CONSTRAINT object_not_own_parent CHECK (parent_object IS DISTINCT FROM name)
);

CREATE TABLE pgveil.permissions (
    role   text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    object text NOT NULL REFERENCES pgveil.objects(name) ON DELETE CASCADE ON UPDATE CASCADE,
    action text NOT NULL CONSTRAINT action_is_a_word CHECK (action ~ '^[a-z_]{1,40}$'),
    effect text NOT NULL DEFAULT 'allow' CHECK (effect IN ('allow', 'deny')),
    PRIMARY KEY (role, object, action)
);

CREATE TABLE pgveil.data_scopes (
    role   text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    object text NOT NULL REFERENCES pgveil.objects(name) ON DELETE CASCADE ON UPDATE CASCADE,
    scope  text NOT NULL CONSTRAINT scope_is_known CHECK (
        scope IN ('all', 'department', 'department_tree', 'team', 'assigned', 'parent', 'none')),
    PRIMARY KEY (role, object)
);

CREATE TABLE pgveil.field_permissions (
    role        text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    object      text NOT NULL REFERENCES pgveil.objects(name) ON DELETE CASCADE ON UPDATE CASCADE,
    column_name text NOT NULL,
    level       text NOT NULL CONSTRAINT level_is_known CHECK (level IN ('read_write', 'read_only', 'invisible')),
    mask        text CONSTRAINT mask_is_known CHECK (mask IS NULL OR mask IN ('null', 'redact', 'partial', 'hash')),
    PRIMARY KEY (role, object, column_name),
    CONSTRAINT mask_only_for_invisible CHECK (mask IS NULL OR level = 'invisible')
);

CREATE TABLE pgveil.assignments (
    id                bigserial PRIMARY KEY,
    role              text NOT NULL REFERENCES pgveil.roles(name) ON DELETE CASCADE ON UPDATE CASCADE,
    user_name         text REFERENCES pgveil.users(name) ON DELETE CASCADE ON UPDATE CASCADE,
    group_name        text REFERENCES pgveil.groups(name) ON DELETE CASCADE ON UPDATE CASCADE,
    valid_from        timestamptz,
    valid_until       timestamptz,
    allowed_networks  cidr[],
    time_window_start time,
    time_window_end   time,
    time_zone         text NOT NULL DEFAULT 'UTC',
    CONSTRAINT assignment_has_one_grantee CHECK ((user_name IS NULL) <> (group_name IS NULL)),
    CONSTRAINT validity_is_ordered CHECK (valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from),
    CONSTRAINT window_has_both_ends CHECK ((time_window_start IS NULL) = (time_window_end IS NULL)),
    CONSTRAINT time_zone_is_known CHECK (now() AT TIME ZONE time_zone IS NOT NULL)
);

-- Functions restricted users may call beyond pgveil's built-in allow-list.
CREATE TABLE pgveil.safe_functions (
    name text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_.]{0,126}$')
);

-- Role inheritance must not cycle.
CREATE FUNCTION pgveil.check_role_cycle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_role IS NOT NULL AND EXISTS (
        WITH RECURSIVE up(name) AS (
            SELECT NEW.parent_role
            UNION
            SELECT r.parent_role FROM pgveil.roles r JOIN up ON r.name = up.name WHERE r.parent_role IS NOT NULL
        ) SELECT 1 FROM up WHERE name = NEW.name) THEN
        RAISE EXCEPTION 'role "%" cannot inherit from "%": that would create a cycle', NEW.name, NEW.parent_role
            USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER role_cycle BEFORE INSERT OR UPDATE OF parent_role ON pgveil.roles
    FOR EACH ROW EXECUTE FUNCTION pgveil.check_role_cycle();

CREATE FUNCTION pgveil.check_department_cycle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NOT NULL AND EXISTS (
        WITH RECURSIVE up(id) AS (
            SELECT NEW.parent_id
            UNION
            SELECT d.parent_id FROM pgveil.departments d JOIN up ON d.id = up.id WHERE d.parent_id IS NOT NULL
        ) SELECT 1 FROM up WHERE id = NEW.id) THEN
        RAISE EXCEPTION 'department "%" cannot be under "%": that would create a cycle', NEW.id, NEW.parent_id
            USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER department_cycle BEFORE INSERT OR UPDATE OF parent_id ON pgveil.departments
    FOR EACH ROW EXECUTE FUNCTION pgveil.check_department_cycle();

-- The CRM Administrator role can only be removed explicitly (pgveil.revoke_role).
CREATE FUNCTION pgveil.protect_builtin_roles() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.builtin THEN
        RAISE EXCEPTION 'role "%" is built in and cannot be deleted', OLD.name USING ERRCODE = '42501';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER builtin_roles BEFORE DELETE ON pgveil.roles
    FOR EACH ROW EXECUTE FUNCTION pgveil.protect_builtin_roles();

-- Raise a 42501 error unless ok is true; used by rewritten writes to refuse rows outside scope.
CREATE FUNCTION pgveil.assert_scope(ok boolean, what text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'pgveil: %', what USING ERRCODE = '42501';
    END IF;
    RETURN true;
END $$;

-- Raise a 54000 error unless ok is true; used to refuse results larger than a role's max_rows.
CREATE FUNCTION pgveil.assert_limit(ok boolean, what text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'pgveil: %', what USING ERRCODE = '54000';
    END IF;
    RETURN true;
END $$;

-- Every change notifies running pgveil instances.
CREATE FUNCTION pgveil.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgveil_policy', TG_TABLE_NAME);
    RETURN NULL;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['departments', 'teams', 'roles', 'users', 'user_teams', 'groups',
        'group_members', 'role_system_permissions', 'objects', 'permissions', 'data_scopes',
        'field_permissions', 'assignments', 'safe_functions'] LOOP
        EXECUTE format('CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgveil.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION pgveil.notify_change()', t);
    END LOOP;
END $$;

-- Built-in roles (first seed): Owner, Manager, Staff, Guest, and the special CRM Administrator.
INSERT INTO pgveil.roles (name, kind, description, builtin, unrestricted, bulk_operations, data_export) VALUES
    ('CRM Administrator', 'management', 'Full access to all CRM data; only removable explicitly', true, true, true, true),
    ('Owner', 'management', 'Full administrative access, billing, security policies', true, true, true, true),
    ('Manager', 'business', 'Team configuration, user management, customer data and orders', true, false, true, true),
    ('Staff', 'business', 'Assigned customers only; read-only reports', true, false, false, false),
    ('Guest', 'business', 'Read-only access to assigned customer accounts; temporary', true, false, false, false);
INSERT INTO pgveil.role_system_permissions (role, permission) VALUES
    ('CRM Administrator', 'manage_users'), ('CRM Administrator', 'manage_roles'),
    ('CRM Administrator', 'manage_policies'), ('CRM Administrator', 'manage_settings'),
    ('CRM Administrator', 'read_audit'),
    ('Owner', 'manage_users'), ('Owner', 'manage_roles'), ('Owner', 'manage_policies'),
    ('Owner', 'manage_settings'), ('Owner', 'read_audit'), ('Owner', 'manage_billing'),
    ('Manager', 'manage_users'), ('Manager', 'manage_roles'), ('Manager', 'read_audit');

-- Convenience operations for DBAs.
CREATE FUNCTION pgveil.create_role(p_name text, p_kind text DEFAULT 'business', p_description text DEFAULT '',
        p_parent text DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
    INSERT INTO pgveil.roles (name, kind, description, parent_role) VALUES (p_name, p_kind, p_description, p_parent);
$$;

CREATE FUNCTION pgveil.grant_permission(p_role text, p_object text, p_actions text[], p_scope text DEFAULT NULL)
        RETURNS void LANGUAGE plpgsql AS $$
DECLARE a text;
BEGIN
    FOREACH a IN ARRAY p_actions LOOP
        -- the seed's shorthand: read = list + view, write = create + edit
        IF a = 'read' THEN
            PERFORM pgveil.grant_permission(p_role, p_object, ARRAY['list', 'view'], NULL);
        ELSIF a = 'write' THEN
            PERFORM pgveil.grant_permission(p_role, p_object, ARRAY['create', 'edit'], NULL);
        ELSE
            INSERT INTO pgveil.permissions (role, object, action, effect) VALUES (p_role, p_object, a, 'allow')
                ON CONFLICT (role, object, action) DO UPDATE SET effect = 'allow';
        END IF;
    END LOOP;
    IF p_scope IS NOT NULL THEN
        PERFORM pgveil.set_scope(p_role, p_object, p_scope);
    END IF;
END $$;

CREATE FUNCTION pgveil.deny_permission(p_role text, p_object text, p_actions text[]) RETURNS void
        LANGUAGE sql AS $$
    INSERT INTO pgveil.permissions (role, object, action, effect)
        SELECT p_role, p_object, a, 'deny' FROM unnest(p_actions) a
    ON CONFLICT (role, object, action) DO UPDATE SET effect = 'deny';
$$;

CREATE FUNCTION pgveil.revoke_permission(p_role text, p_object text, p_actions text[]) RETURNS void
        LANGUAGE sql AS $$
    DELETE FROM pgveil.permissions WHERE role = p_role AND object = p_object AND action = ANY (p_actions);
$$;

CREATE FUNCTION pgveil.set_scope(p_role text, p_object text, p_scope text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO pgveil.data_scopes (role, object, scope) VALUES (p_role, p_object, p_scope)
    ON CONFLICT (role, object) DO UPDATE SET scope = EXCLUDED.scope;
$$;

CREATE FUNCTION pgveil.set_field(p_role text, p_object text, p_column text, p_level text, p_mask text DEFAULT NULL)
        RETURNS void LANGUAGE sql AS $$
    INSERT INTO pgveil.field_permissions (role, object, column_name, level, mask)
        VALUES (p_role, p_object, p_column, p_level, p_mask)
    ON CONFLICT (role, object, column_name) DO UPDATE SET level = EXCLUDED.level, mask = EXCLUDED.mask;
$$;

CREATE FUNCTION pgveil.assign_role(p_user text, p_role text, p_valid_from timestamptz DEFAULT NULL,
        p_valid_until timestamptz DEFAULT NULL, p_networks cidr[] DEFAULT NULL,
        p_window_start time DEFAULT NULL, p_window_end time DEFAULT NULL, p_time_zone text DEFAULT 'UTC')
        RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO pgveil.assignments (role, user_name, valid_from, valid_until, allowed_networks,
                                    time_window_start, time_window_end, time_zone)
    VALUES (p_role, p_user, p_valid_from, p_valid_until, p_networks, p_window_start, p_window_end, p_time_zone)
    RETURNING id;
$$;

CREATE FUNCTION pgveil.assign_role_to_group(p_group text, p_role text) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO pgveil.assignments (role, group_name) VALUES (p_role, p_group) RETURNING id;
$$;

-- Explicit removal of one role (the only way to remove CRM Administrator).
CREATE FUNCTION pgveil.revoke_role(p_user text, p_role text) RETURNS integer LANGUAGE sql AS $$
    WITH d AS (DELETE FROM pgveil.assignments WHERE user_name = p_user AND role = p_role RETURNING 1)
    SELECT count(*)::int FROM d;
$$;

-- Second seed's "Remove": all roles except CRM Administrator.
CREATE FUNCTION pgveil.remove_all_roles(p_user text) RETURNS integer LANGUAGE sql AS $$
    WITH d AS (DELETE FROM pgveil.assignments WHERE user_name = p_user AND role <> 'CRM Administrator' RETURNING 1)
    SELECT count(*)::int FROM d;
$$;

-- Second seed's "Copy Role to Employee": superimposes the source's roles on the target.
CREATE FUNCTION pgveil.copy_roles(p_from text, p_to text) RETURNS integer LANGUAGE sql AS $$
    WITH i AS (
        INSERT INTO pgveil.assignments (role, user_name, valid_from, valid_until, allowed_networks,
                                        time_window_start, time_window_end, time_zone)
        SELECT a.role, p_to, a.valid_from, a.valid_until, a.allowed_networks, a.time_window_start,
               a.time_window_end, a.time_zone
        FROM pgveil.assignments a
        WHERE a.user_name = p_from AND a.role <> 'CRM Administrator'
          AND NOT EXISTS (SELECT 1 FROM pgveil.assignments b WHERE b.user_name = p_to AND b.role = a.role)
        RETURNING 1)
    SELECT count(*)::int FROM i;
$$;

CREATE FUNCTION pgveil.set_primary_role(p_user text, p_role text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgveil.assignments WHERE user_name = p_user AND role = p_role) THEN
        RAISE EXCEPTION 'user "%" does not have role "%"; assign it before making it primary', p_user, p_role
            USING ERRCODE = '23514';
    END IF;
    UPDATE pgveil.users SET primary_role = p_role WHERE name = p_user;
END $$;

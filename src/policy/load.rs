//! Reading the catalog (and the upstream relations it protects) with tokio-postgres.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::model::*;

/// Errors loading the catalog.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("catalog query failed: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("catalog holds an invalid value: {0}")]
    Invalid(String),
    #[error("the pgveil catalog is not initialised (run `pgveil init`)")]
    NotInitialised,
}

/// Read the whole catalog in one REPEATABLE READ snapshot.
pub async fn load_catalog(c: &Client) -> Result<Catalog, LoadError> {
    let exists = c
        .query_one(
            "SELECT to_regclass('pgveil.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Err(LoadError::NotInitialised);
    }
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let res = load_in_tx(c).await;
    let _ = c.batch_execute("COMMIT").await;
    res
}

async fn load_in_tx(c: &Client) -> Result<Catalog, LoadError> {
    let mut cat = Catalog::default();
    for r in c
        .query(
            "SELECT id, name, parent_id FROM pgveil.departments ORDER BY id",
            &[],
        )
        .await?
    {
        cat.departments.push(Department {
            id: r.get(0),
            name: r.get(1),
            parent: r.get(2),
        });
    }
    for r in c
        .query(
            "SELECT id, name, department_id FROM pgveil.teams ORDER BY id",
            &[],
        )
        .await?
    {
        cat.teams.push(Team {
            id: r.get(0),
            name: r.get(1),
            department: r.get(2),
        });
    }
    let mut sys = grouped(
        c,
        "SELECT role, permission FROM pgveil.role_system_permissions ORDER BY role, permission",
    )
    .await?;
    for r in c
        .query(
            "SELECT name, kind, description, parent_role, builtin, unrestricted, bulk_operations, \
             bulk_threshold, data_export, max_rows FROM pgveil.roles ORDER BY name",
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        let kind = match r.get::<_, &str>(1) {
            "management" => RoleKind::Management,
            _ => RoleKind::Business,
        };
        let system_permissions = sys.remove(&name).unwrap_or_default();
        cat.roles.push(Role {
            name,
            kind,
            description: r.get(2),
            parent: r.get(3),
            builtin: r.get(4),
            unrestricted: r.get(5),
            bulk_operations: r.get(6),
            bulk_threshold: r.get(7),
            data_export: r.get(8),
            max_rows: r.get(9),
            system_permissions,
        });
    }
    let mut teams = grouped(
        c,
        "SELECT user_name, team_id FROM pgveil.user_teams ORDER BY 1, 2",
    )
    .await?;
    for r in c
        .query(
            "SELECT name, owner_value, department_id, approval_department_id, active, primary_role, \
             password_verifier FROM pgveil.users ORDER BY name",
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        let user_teams = teams.remove(&name).unwrap_or_default();
        cat.users.push(User {
            name,
            owner_value: r.get(1),
            department: r.get(2),
            approval_department: r.get(3),
            teams: user_teams,
            active: r.get(4),
            primary_role: r.get(5),
            password_verifier: r.get(6),
        });
    }
    let mut members = grouped(
        c,
        "SELECT group_name, user_name FROM pgveil.group_members ORDER BY 1, 2",
    )
    .await?;
    for r in c
        .query("SELECT name FROM pgveil.groups ORDER BY name", &[])
        .await?
    {
        let name: String = r.get(0);
        let m = members.remove(&name).unwrap_or_default();
        cat.groups.push(Group { name, members: m });
    }
    for r in c
        .query(
            "SELECT name, table_schema, table_name, primary_key, owner_column, department_column, \
             team_column, parent_object, parent_column FROM pgveil.objects ORDER BY name",
            &[],
        )
        .await?
    {
        cat.objects.push(Object {
            name: r.get(0),
            schema: r.get(1),
            table: r.get(2),
            primary_key: r.get(3),
            owner_column: r.get(4),
            department_column: r.get(5),
            team_column: r.get(6),
            parent_object: r.get(7),
            parent_column: r.get(8),
        });
    }
    for r in c
        .query(
            "SELECT role, object, action, effect FROM pgveil.permissions ORDER BY 1, 2, 3",
            &[],
        )
        .await?
    {
        let effect = if r.get::<_, &str>(3) == "deny" {
            Effect::Deny
        } else {
            Effect::Allow
        };
        cat.permissions.push(Permission {
            role: r.get(0),
            object: r.get(1),
            action: r.get(2),
            effect,
        });
    }
    for r in c
        .query(
            "SELECT role, object, scope FROM pgveil.data_scopes ORDER BY 1, 2",
            &[],
        )
        .await?
    {
        let s: &str = r.get(2);
        let scope = Scope::parse(s).ok_or_else(|| LoadError::Invalid(format!("scope {s}")))?;
        cat.scopes.push(ScopeRule {
            role: r.get(0),
            object: r.get(1),
            scope,
        });
    }
    for r in c
        .query("SELECT role, object, column_name, level, mask FROM pgveil.field_permissions ORDER BY 1, 2, 3", &[])
        .await?
    {
        let l: &str = r.get(3);
        let level = FieldLevel::parse(l).ok_or_else(|| LoadError::Invalid(format!("field level {l}")))?;
        let mask = match r.get::<_, Option<&str>>(4) {
            None => None,
            Some(m) => Some(Mask::parse(m).ok_or_else(|| LoadError::Invalid(format!("mask {m}")))?),
        };
        cat.fields.push(FieldRule { role: r.get(0), object: r.get(1), column: r.get(2), level, mask });
    }
    for r in c
        .query(
            "SELECT role, user_name, group_name, valid_from, valid_until, \
             coalesce(array(SELECT n::text FROM unnest(allowed_networks) n), '{}'), \
             time_window_start::text, time_window_end::text, time_zone FROM pgveil.assignments ORDER BY id",
            &[],
        )
        .await?
    {
        let nets: Vec<String> = r.get(5);
        let allowed_networks = nets
            .iter()
            .map(|n| n.parse::<ipnet::IpNet>().map_err(|e| LoadError::Invalid(format!("network {n}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let start: Option<String> = r.get(6);
        let end: Option<String> = r.get(7);
        let time_window = match (start, end) {
            (Some(s), Some(e)) => Some(TimeWindow {
                start: parse_time(&s)?,
                end: parse_time(&e)?,
                time_zone: r.get(8),
            }),
            _ => None,
        };
        cat.assignments.push(Assignment {
            role: r.get(0),
            user: r.get(1),
            group: r.get(2),
            valid_from: r.get(3),
            valid_until: r.get(4),
            allowed_networks,
            time_window,
        });
    }
    for r in c
        .query(
            "SELECT role_a, role_b, reason FROM pgveil.role_conflicts ORDER BY 1, 2",
            &[],
        )
        .await?
    {
        cat.role_conflicts.push(RoleConflict {
            role_a: r.get(0),
            role_b: r.get(1),
            reason: r.get(2),
        });
    }
    for r in c
        .query("SELECT name FROM pgveil.safe_functions ORDER BY name", &[])
        .await?
    {
        cat.safe_functions.push(r.get(0));
    }
    Ok(cat)
}

/// The rows of a two-column (key, value) query, grouped by key, values in row order: each
/// owner takes its list in one lookup (a catalog of 10,000 users is not scanned per user).
async fn grouped(c: &Client, sql: &str) -> Result<BTreeMap<String, Vec<String>>, LoadError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in c.query(sql, &[]).await? {
        map.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(map)
}

fn parse_time(s: &str) -> Result<chrono::NaiveTime, LoadError> {
    chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .map_err(|e| LoadError::Invalid(format!("time {s}: {e}")))
}

/// Is pgveil's DDL event trigger installed and enabled in this database?
pub async fn ddl_trigger_enabled(c: &Client) -> Result<bool, LoadError> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger \
             WHERE evtname = 'pgveil_ddl' AND evtenabled <> 'D')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Relations (tables, views, matviews, partitioned and foreign tables) in user schemas.
pub async fn load_relations(c: &Client) -> Result<RelationMap, LoadError> {
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, NULL), \
                    t.typcategory = 'S' \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE c.relkind IN ('r','v','m','p','f') \
               AND n.nspname NOT IN ('pg_catalog','information_schema','pgveil','pg_toast') \
               AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' \
             ORDER BY 1, 2, a.attnum",
            &[],
        )
        .await?;
    let mut map: RelationMap = BTreeMap::new();
    for r in rows {
        let schema: String = r.get(0);
        let name: String = r.get(1);
        let col = Column {
            name: r.get(2),
            type_name: r.get(3),
            is_text: r.get(4),
        };
        map.entry((schema.clone(), name.clone()))
            .or_insert_with(|| Relation {
                schema,
                name,
                columns: Vec::new(),
            })
            .columns
            .push(col);
    }
    Ok(map)
}

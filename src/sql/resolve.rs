//! Resolving names like PostgreSQL: unquoted identifiers fold to lower case, quoted ones stay
//! exact; unqualified names search pg_catalog then the pinned search_path. Anything that does
//! not resolve to a known relation is refused.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use crate::error::ClientError;
use crate::policy::Snapshot;

/// What a relation name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A protected object (schema, table).
    Object(String, String),
    /// A structural system catalog that is safe to read.
    Catalog(String, String),
}

/// Fold an identifier as PostgreSQL does.
pub fn fold(id: &Ident) -> Result<String, ClientError> {
    match id.quote_style {
        None => Ok(id.value.to_lowercase()),
        Some('"') if id.value.contains('\\') => Err(ClientError::unsupported(
            "pgveil does not accept backslashes in quoted identifiers",
        )),
        Some('"') => Ok(id.value.clone()),
        Some(_) => Err(ClientError::unsupported(format!(
            "unsupported identifier quoting in {id}"
        ))),
    }
}

/// The folded parts of an object name.
pub fn parts(name: &ObjectName) -> Result<Vec<String>, ClientError> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => fold(id),
            other => Err(ClientError::unsupported(format!(
                "unsupported name part {other}"
            ))),
        })
        .collect()
}

/// Structural catalogs readable by restricted users (they describe structure, not data).
const PG_CATALOG_READABLE: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_available_extensions",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_database",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_range",
    "pg_rewrite",
    "pg_roles",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shdescription",
    "pg_statistic_ext",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_views",
    "pg_user",
    "pg_shseclabel",
    "pg_seclabel",
    "pg_transform",
    "pg_publication_rel",
    "pg_subscription_rel",
    "pg_publication_namespace",
    "pg_publication_tables",
];

const INFORMATION_SCHEMA_READABLE: &[&str] = &[
    "applicable_roles",
    "attributes",
    "character_sets",
    "check_constraints",
    "collations",
    "column_domain_usage",
    "column_privileges",
    "column_udt_usage",
    "columns",
    "constraint_column_usage",
    "constraint_table_usage",
    "domain_constraints",
    "domains",
    "element_types",
    "enabled_roles",
    "key_column_usage",
    "parameters",
    "referential_constraints",
    "role_table_grants",
    "routines",
    "schemata",
    "sequences",
    "table_constraints",
    "table_privileges",
    "tables",
    "triggers",
    "user_defined_types",
    "view_column_usage",
    "view_table_usage",
    "views",
];

fn catalog_readable(schema: &str, name: &str) -> bool {
    match schema {
        "pg_catalog" => PG_CATALOG_READABLE.contains(&name),
        "information_schema" => INFORMATION_SCHEMA_READABLE.contains(&name),
        _ => false,
    }
}

fn denied_catalog(schema: &str, name: &str) -> ClientError {
    ClientError::Denied {
        message: format!("permission denied for relation {schema}.{name}"),
        hint: Some("pgveil only exposes system catalogs that describe structure, not data or other sessions".into()),
    }
}

/// Resolve a relation name for a restricted user.
pub fn resolve(
    snap: &Snapshot,
    search_path: &[String],
    database: &str,
    name: &ObjectName,
) -> Result<Resolved, ClientError> {
    let p = parts(name)?;
    let (schema, rel) = match p.as_slice() {
        [rel] => (None, rel.clone()),
        [schema, rel] => (Some(schema.clone()), rel.clone()),
        [db, schema, rel] if db == database => (Some(schema.clone()), rel.clone()),
        _ => {
            return Err(ClientError::denied(format!(
                "cross-database or malformed reference {name} is not allowed"
            )))
        }
    };
    if let Some(schema) = schema {
        return resolve_in(snap, &schema, &rel)
            .ok_or_else(|| unknown(&format!("{schema}.{rel}"), snap, &schema, &rel));
    }
    // pg_catalog is searched first unless listed explicitly, like PostgreSQL.
    let mut path: Vec<&str> = Vec::new();
    if !search_path.iter().any(|s| s == "pg_catalog") {
        path.push("pg_catalog");
    }
    path.extend(search_path.iter().map(String::as_str));
    for schema in path {
        if schema == "pg_catalog" {
            if is_pg_catalog_relation(&rel) {
                return if catalog_readable("pg_catalog", &rel) {
                    Ok(Resolved::Catalog("pg_catalog".into(), rel))
                } else {
                    Err(denied_catalog("pg_catalog", &rel))
                };
            }
            continue;
        }
        if snap
            .relations
            .contains_key(&(schema.to_owned(), rel.clone()))
        {
            return resolve_in(snap, schema, &rel).ok_or_else(|| unknown(&rel, snap, schema, &rel));
        }
    }
    Err(unknown(&rel, snap, "", &rel))
}

/// pg_catalog relations are all named pg_*; anything else in the search path wins.
fn is_pg_catalog_relation(rel: &str) -> bool {
    rel.starts_with("pg_")
}

fn resolve_in(snap: &Snapshot, schema: &str, rel: &str) -> Option<Resolved> {
    if catalog_readable(schema, rel) {
        return Some(Resolved::Catalog(schema.to_owned(), rel.to_owned()));
    }
    if schema == "pg_catalog" || schema == "information_schema" {
        return None;
    }
    snap.object_for_table(schema, rel)
        .map(|o| Resolved::Object(o.schema.clone(), o.table.clone()))
}

fn unknown(display: &str, snap: &Snapshot, schema: &str, rel: &str) -> ClientError {
    let exists = !schema.is_empty()
        && snap
            .relations
            .contains_key(&(schema.to_owned(), rel.to_owned()));
    if schema == "pg_catalog" || schema == "information_schema" {
        return denied_catalog(schema, rel);
    }
    if exists {
        ClientError::Denied {
            message: format!("permission denied for relation {display}: it is not a pgveil object"),
            hint: Some("declare it in pgveil.objects to make it readable under a policy".into()),
        }
    } else {
        ClientError::Denied {
            message: format!("relation \"{display}\" is unknown to pgveil"),
            hint: Some("pgveil refuses references it cannot resolve to a declared object".into()),
        }
    }
}

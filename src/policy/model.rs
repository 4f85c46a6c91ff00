//! The policy catalog as loaded from PostgreSQL: plain data, no behaviour.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A department; departments form a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Department {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A team inside a department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

/// An employee who logs in through pgveil.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// The value matched against owner (assigned-user) columns.
    pub owner_value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_department: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_role: Option<String>,
    /// SCRAM-SHA-256 verifier; never a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_verifier: Option<String>,
}

fn yes() -> bool {
    true
}

/// A group of users; roles can be assigned to groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// Management roles carry system permissions; business roles carry object permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    Management,
    Business,
}

/// A role with its restrictions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    pub kind: RoleKind,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub builtin: bool,
    /// Full access (CRM Administrator, Owner): SQL passes through unchanged.
    #[serde(default)]
    pub unrestricted: bool,
    #[serde(default = "yes")]
    pub bulk_operations: bool,
    #[serde(default = "default_bulk_threshold")]
    pub bulk_threshold: i32,
    #[serde(default = "yes")]
    pub data_export: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_permissions: Vec<String>,
}

fn default_bulk_threshold() -> i32 {
    100
}

/// A protected table and how its records relate to people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    pub name: String,
    #[serde(default = "public")]
    pub schema: String,
    pub table: String,
    #[serde(default = "default_pk")]
    pub primary_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_column: Option<String>,
}

fn public() -> String {
    "public".into()
}
fn default_pk() -> String {
    "id".into()
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// `object.action` granted or denied to a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub role: String,
    pub object: String,
    pub action: String,
    #[serde(default = "allow")]
    pub effect: Effect,
}

fn allow() -> Effect {
    Effect::Allow
}

/// Data scope of a role on an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    All,
    Department,
    DepartmentTree,
    Team,
    Assigned,
    Parent,
    None,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "all" => Scope::All,
            "department" => Scope::Department,
            "department_tree" => Scope::DepartmentTree,
            "team" => Scope::Team,
            "assigned" => Scope::Assigned,
            "parent" => Scope::Parent,
            "none" => Scope::None,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Department => "department",
            Scope::DepartmentTree => "department_tree",
            Scope::Team => "team",
            Scope::Assigned => "assigned",
            Scope::Parent => "parent",
            Scope::None => "none",
        }
    }
}

/// A role's data scope on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    pub role: String,
    pub object: String,
    pub scope: Scope,
}

/// Field level, ordered from least to most permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldLevel {
    Invisible,
    ReadOnly,
    ReadWrite,
}

impl FieldLevel {
    pub fn parse(s: &str) -> Option<FieldLevel> {
        Some(match s {
            "invisible" => FieldLevel::Invisible,
            "read_only" => FieldLevel::ReadOnly,
            "read_write" => FieldLevel::ReadWrite,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            FieldLevel::Invisible => "invisible",
            FieldLevel::ReadOnly => "read_only",
            FieldLevel::ReadWrite => "read_write",
        }
    }
}

/// How an invisible field is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    #[default]
    Null,
    Redact,
    Partial,
    Hash,
}

impl Mask {
    pub fn parse(s: &str) -> Option<Mask> {
        Some(match s {
            "null" => Mask::Null,
            "redact" => Mask::Redact,
            "partial" => Mask::Partial,
            "hash" => Mask::Hash,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mask::Null => "null",
            Mask::Redact => "redact",
            Mask::Partial => "partial",
            Mask::Hash => "hash",
        }
    }
}

/// A role's level on one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    pub role: String,
    pub object: String,
    pub column: String,
    pub level: FieldLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Mask>,
}

/// A (possibly temporary, possibly conditional) role assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<TimeWindow>,
}

/// Daily window in a time zone; `start > end` wraps midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// A column of a relation in the upstream database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, NULL)`: the type without modifiers, for casts.
    pub type_name: String,
    /// Text-like types can carry redact/partial masks.
    pub is_text: bool,
}

/// A relation (table, view, ...) in the upstream database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

/// Two roles one user must never hold together (segregation of duties).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConflict {
    pub role_a: String,
    pub role_b: String,
    #[serde(default)]
    pub reason: String,
}

/// Everything pgveil knows about policy: loaded in one consistent read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub departments: Vec<Department>,
    #[serde(default)]
    pub teams: Vec<Team>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub objects: Vec<Object>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub scopes: Vec<ScopeRule>,
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    #[serde(default)]
    pub safe_functions: Vec<String>,
    #[serde(default)]
    pub role_conflicts: Vec<RoleConflict>,
}

/// Relations of the upstream database keyed by (schema, name).
pub type RelationMap = BTreeMap<(String, String), Relation>;

/// Convenience index used by the compiler.
pub fn index_by<T, K: std::hash::Hash + Eq, F: Fn(&T) -> K>(items: &[T], key: F) -> HashMap<K, &T> {
    items.iter().map(|i| (key(i), i)).collect()
}

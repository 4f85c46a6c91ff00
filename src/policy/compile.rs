//! Compiling the catalog: an immutable [`Snapshot`] per catalog generation, and per user an
//! [`Effective`] policy (roles after inheritance, validity and conditions; per-object actions,
//! row predicates, field levels; restrictions). Enforcement is then a pure lookup.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::model::*;

/// Actions that let a user read an object.
pub const READ_ACTIONS: [&str; 2] = ["list", "view"];

/// One catalog generation, indexed.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub catalog: Catalog,
    pub relations: RelationMap,
    /// Structure changes upstream reload the policy (pgveil's DDL event trigger is installed
    /// in the database it reads relations from and listens on). Only then may a table be read
    /// in place: otherwise a column added later would be readable before pgveil knew of it.
    pub relations_tracked: bool,
    users: HashMap<String, usize>,
    roles: HashMap<String, usize>,
    objects: HashMap<String, usize>,
    objects_by_table: HashMap<(String, String), usize>,
    dept_children: HashMap<String, Vec<String>>,
    pub safe_functions: HashSet<String>,
    /// assignment indices by user / by group; groups by member
    assignments_by_user: HashMap<String, Vec<usize>>,
    assignments_by_group: HashMap<String, Vec<usize>>,
    groups_by_user: HashMap<String, Vec<String>>,
    /// (role, object) → [(action, effect)]
    permissions: HashMap<(String, String), Vec<(String, Effect)>>,
    /// object → actions mentioned anywhere
    object_actions: HashMap<String, BTreeSet<String>>,
    scopes: HashMap<(String, String), Scope>,
    /// (role, object) → column → (level, mask)
    fields: HashMap<(String, String), HashMap<String, (FieldLevel, Mask)>>,
}

impl Snapshot {
    /// Index a catalog.
    pub fn new(generation: u64, catalog: Catalog, relations: RelationMap) -> Snapshot {
        let users = catalog
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        let roles = catalog
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let objects = catalog
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name.clone(), i))
            .collect();
        let objects_by_table = catalog
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| ((o.schema.clone(), o.table.clone()), i))
            .collect();
        let mut dept_children: HashMap<String, Vec<String>> = HashMap::new();
        for d in &catalog.departments {
            if let Some(p) = &d.parent {
                dept_children
                    .entry(p.clone())
                    .or_default()
                    .push(d.id.clone());
            }
        }
        let safe_functions = catalog
            .safe_functions
            .iter()
            .map(|s| s.to_lowercase())
            .collect();
        let mut assignments_by_user: HashMap<String, Vec<usize>> = HashMap::new();
        let mut assignments_by_group: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in catalog.assignments.iter().enumerate() {
            if let Some(u) = &a.user {
                assignments_by_user.entry(u.clone()).or_default().push(i);
            }
            if let Some(g) = &a.group {
                assignments_by_group.entry(g.clone()).or_default().push(i);
            }
        }
        let mut groups_by_user: HashMap<String, Vec<String>> = HashMap::new();
        for g in &catalog.groups {
            for m in &g.members {
                groups_by_user
                    .entry(m.clone())
                    .or_default()
                    .push(g.name.clone());
            }
        }
        let mut permissions: HashMap<(String, String), Vec<(String, Effect)>> = HashMap::new();
        let mut object_actions: HashMap<String, BTreeSet<String>> = HashMap::new();
        for p in &catalog.permissions {
            permissions
                .entry((p.role.clone(), p.object.clone()))
                .or_default()
                .push((p.action.clone(), p.effect));
            object_actions
                .entry(p.object.clone())
                .or_default()
                .insert(p.action.clone());
        }
        let scopes = catalog
            .scopes
            .iter()
            .map(|s| ((s.role.clone(), s.object.clone()), s.scope))
            .collect();
        let mut fields: HashMap<(String, String), HashMap<String, (FieldLevel, Mask)>> =
            HashMap::new();
        for f in &catalog.fields {
            fields
                .entry((f.role.clone(), f.object.clone()))
                .or_default()
                .insert(f.column.clone(), (f.level, f.mask.unwrap_or_default()));
        }
        Snapshot {
            assignments_by_user,
            assignments_by_group,
            groups_by_user,
            permissions,
            object_actions,
            scopes,
            fields,
            generation,
            catalog,
            relations,
            relations_tracked: false,
            users,
            roles,
            objects,
            objects_by_table,
            dept_children,
            safe_functions,
        }
    }

    /// The same snapshot, saying whether structure changes reload it.
    pub fn with_relations_tracked(mut self, tracked: bool) -> Snapshot {
        self.relations_tracked = tracked;
        self
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name).map(|&i| &self.catalog.users[i])
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name).map(|&i| &self.catalog.roles[i])
    }

    pub fn object(&self, name: &str) -> Option<&Object> {
        self.objects.get(name).map(|&i| &self.catalog.objects[i])
    }

    /// The object protecting `schema.table`, if any.
    pub fn object_for_table(&self, schema: &str, table: &str) -> Option<&Object> {
        self.objects_by_table
            .get(&(schema.to_owned(), table.to_owned()))
            .map(|&i| &self.catalog.objects[i])
    }

    /// A department and all departments below it.
    pub fn department_subtree(&self, root: &str) -> Vec<String> {
        let mut out = vec![root.to_owned()];
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = self.dept_children.get(&out[i]) {
                for k in kids {
                    if !out.contains(k) {
                        out.push(k.clone());
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Indices of the assignments active for `user` at `now` from `ip` (direct and via groups).
    pub fn active_assignments(
        &self,
        user: &str,
        now: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Vec<usize> {
        let direct = self.assignments_by_user.get(user).into_iter().flatten();
        let via_groups = self
            .groups_by_user
            .get(user)
            .into_iter()
            .flatten()
            .flat_map(|g| self.assignments_by_group.get(g).into_iter().flatten());
        let mut out: Vec<usize> = direct
            .chain(via_groups)
            .copied()
            .filter(|&i| {
                assignment_inactive_reason(&self.catalog.assignments[i], now, ip).is_none()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A role and its ancestors, nearest first (cycle-safe).
    pub fn role_chain(&self, role: &str) -> Vec<&Role> {
        let mut chain: Vec<&Role> = Vec::new();
        let mut next = Some(role.to_owned());
        while let Some(name) = next {
            match self.role(&name) {
                Some(r) if !chain.iter().any(|c| c.name == r.name) => {
                    next = r.parent.clone();
                    chain.push(r);
                }
                _ => break,
            }
        }
        chain
    }
}

/// Why an assignment is not active now, or None if it is.
pub fn assignment_inactive_reason(
    a: &Assignment,
    now: DateTime<Utc>,
    ip: Option<IpAddr>,
) -> Option<String> {
    if let Some(from) = a.valid_from {
        if now < from {
            return Some(format!("not valid before {from}"));
        }
    }
    if let Some(until) = a.valid_until {
        if now >= until {
            return Some(format!("expired at {until}"));
        }
    }
    if !a.allowed_networks.is_empty() {
        match ip {
            Some(ip) if a.allowed_networks.iter().any(|n| n.contains(&ip)) => {}
            _ => return Some("client address is outside the allowed networks".into()),
        }
    }
    if let Some(w) = &a.time_window {
        let tz: chrono_tz::Tz = match w.time_zone.parse() {
            Ok(tz) => tz,
            Err(_) => return Some(format!("unknown time zone {}", w.time_zone)),
        };
        let local = now.with_timezone(&tz).time();
        let inside = if w.start <= w.end {
            local >= w.start && local < w.end
        } else {
            local >= w.start || local < w.end
        };
        if !inside {
            return Some(format!(
                "outside the time window {}-{} {}",
                w.start, w.end, w.time_zone
            ));
        }
    }
    None
}

/// One disjunct of a row predicate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Atom {
    /// owner column = value
    Owner(String),
    /// department column IN (...)
    Departments(Vec<String>),
    /// team column IN (...)
    Teams(Vec<String>),
    /// the parent record is readable
    Parent,
}

/// Which rows of an object: all, none, or any of the atoms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowPred {
    All,
    Any(BTreeSet<Atom>),
}

impl RowPred {
    pub fn nothing() -> RowPred {
        RowPred::Any(BTreeSet::new())
    }
    pub fn is_nothing(&self) -> bool {
        matches!(self, RowPred::Any(a) if a.is_empty())
    }
    fn or(&mut self, other: RowPred) {
        match (&mut *self, other) {
            (RowPred::All, _) => {}
            (_, RowPred::All) => *self = RowPred::All,
            (RowPred::Any(a), RowPred::Any(b)) => a.extend(b),
        }
    }
    /// True if every row admitted by `other` is admitted by `self` (syntactic).
    pub fn covers(&self, other: &RowPred) -> bool {
        match (self, other) {
            (RowPred::All, _) => true,
            (RowPred::Any(_), RowPred::All) => false,
            (RowPred::Any(a), RowPred::Any(b)) => b.is_subset(a),
        }
    }
}

/// How a column is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnRead {
    Visible,
    Hidden(Mask),
    /// visible on rows matching the predicate, masked elsewhere
    When(RowPred, Mask),
}

/// A column's compiled rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnPolicy {
    pub name: String,
    pub type_name: String,
    pub is_text: bool,
    pub read: ColumnRead,
    /// Some role granting `create` makes it read-write.
    pub create: bool,
    /// Rows on which it may be edited (roles granting `edit` with read-write).
    pub edit: RowPred,
    /// Explanation of the most permissive level, for error messages.
    pub level: FieldLevel,
}

/// The compiled policy of one object for one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectPolicy {
    pub object: String,
    pub schema: String,
    pub table: String,
    pub primary_key: String,
    pub actions: BTreeSet<String>,
    pub denied: BTreeSet<String>,
    pub read: RowPred,
    pub create: RowPred,
    pub edit: RowPred,
    pub delete: RowPred,
    pub columns: Vec<ColumnPolicy>,
    pub owner_column: Option<String>,
    pub department_column: Option<String>,
    pub team_column: Option<String>,
    pub parent: Option<(String, String)>,
    /// Set when the table is missing upstream; every access is refused.
    pub missing: bool,
}

impl ObjectPolicy {
    pub fn allows(&self, action: &str) -> bool {
        self.actions.contains(action)
    }
    pub fn column(&self, name: &str) -> Option<&ColumnPolicy> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Restrictions after stacking (most permissive wins).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Restrictions {
    pub bulk_operations: bool,
    pub bulk_threshold: i64,
    pub data_export: bool,
    pub max_rows: Option<i64>,
}

/// A user's effective permissions at one moment.
#[derive(Debug, Clone)]
pub struct Effective {
    pub user: String,
    pub generation: u64,
    pub unrestricted: bool,
    pub roles: Vec<String>,
    pub system_permissions: BTreeSet<String>,
    pub restrictions: Restrictions,
    /// keyed by (schema, table)
    pub objects: BTreeMap<(String, String), ObjectPolicy>,
    pub owner_value: String,
    /// SHA-256 (hex) of everything above except the generation: equal for two compilations
    /// exactly when they enforce the same way, whatever else changed in the catalog.
    pub content_digest: std::sync::Arc<str>,
}

impl Effective {
    pub fn object(&self, schema: &str, table: &str) -> Option<&ObjectPolicy> {
        self.objects.get(&(schema.to_owned(), table.to_owned()))
    }
    pub fn object_by_name(&self, name: &str) -> Option<&ObjectPolicy> {
        self.objects.values().find(|o| o.object == name)
    }
}

/// Compile the effective policy for `user` from the given active assignments.
pub fn compile(snap: &Snapshot, user: &User, active: &[usize]) -> Effective {
    let mut direct: BTreeSet<String> = BTreeSet::new();
    for &i in active {
        if let Some(a) = snap.catalog.assignments.get(i) {
            direct.insert(a.role.clone());
        }
    }
    let chains: Vec<Vec<&Role>> = direct
        .iter()
        .map(|r| snap.role_chain(r))
        .filter(|c| !c.is_empty())
        .collect();
    let unrestricted = chains.iter().flatten().any(|r| r.unrestricted);
    let system_permissions = chains
        .iter()
        .flatten()
        .flat_map(|r| r.system_permissions.iter().cloned())
        .collect();
    let restrictions = stack_restrictions(chains.iter().map(|c| c[0]));
    let mut objects = BTreeMap::new();
    for obj in &snap.catalog.objects {
        let op = compile_object(snap, user, obj, &chains);
        objects.insert((obj.schema.clone(), obj.table.clone()), op);
    }
    let roles: Vec<String> = direct.into_iter().collect();
    // Debug output of ordered maps and sets is deterministic.
    let content = format!(
        "{:?}",
        (
            &user.name,
            unrestricted,
            &roles,
            &system_permissions,
            &restrictions,
            &objects,
            &user.owner_value
        )
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, content.as_bytes());
    Effective {
        user: user.name.clone(),
        generation: snap.generation,
        unrestricted,
        roles,
        system_permissions,
        restrictions,
        objects,
        owner_value: user.owner_value.clone(),
        content_digest: digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into(),
    }
}

fn stack_restrictions<'a>(roles: impl Iterator<Item = &'a Role>) -> Restrictions {
    let mut r = Restrictions {
        bulk_operations: false,
        bulk_threshold: 0,
        data_export: false,
        max_rows: Some(0),
    };
    let mut any = false;
    for role in roles {
        any = true;
        r.bulk_operations |= role.bulk_operations;
        r.bulk_threshold = r.bulk_threshold.max(i64::from(role.bulk_threshold));
        r.data_export |= role.data_export;
        r.max_rows = match (r.max_rows, role.max_rows) {
            (None, _) | (_, None) => None,
            (Some(a), Some(b)) => Some(a.max(b)),
        };
    }
    if !any {
        r.max_rows = Some(0);
    }
    r
}

/// Does the chain allow (object, action)? Deny anywhere in the chain wins for that chain.
fn chain_permission(
    snap: &Snapshot,
    chain: &[&Role],
    object: &str,
    action: &str,
) -> Option<Effect> {
    let mut found = None;
    for role in chain {
        let perms = snap
            .permissions
            .get(&(role.name.clone(), object.to_owned()));
        for (a, effect) in perms.into_iter().flatten() {
            if a == action {
                if *effect == Effect::Deny {
                    return Some(Effect::Deny);
                }
                found = Some(Effect::Allow);
            }
        }
    }
    found
}

fn chain_scope(snap: &Snapshot, chain: &[&Role], object: &str) -> Option<Scope> {
    chain.iter().find_map(|role| {
        snap.scopes
            .get(&(role.name.clone(), object.to_owned()))
            .copied()
    })
}

fn chain_field(snap: &Snapshot, chain: &[&Role], object: &str, column: &str) -> (FieldLevel, Mask) {
    chain
        .iter()
        .find_map(|role| {
            snap.fields
                .get(&(role.name.clone(), object.to_owned()))?
                .get(column)
                .copied()
        })
        .unwrap_or((FieldLevel::ReadWrite, Mask::Null))
}

/// The rows a scope admits for this user on this object.
pub fn scope_pred(snap: &Snapshot, user: &User, obj: &Object, scope: Scope) -> RowPred {
    let one = |a: Atom| RowPred::Any(BTreeSet::from([a]));
    match scope {
        Scope::All => RowPred::All,
        Scope::None => RowPred::nothing(),
        Scope::Assigned if obj.owner_column.is_some() => one(Atom::Owner(user.owner_value.clone())),
        Scope::Department | Scope::DepartmentTree if obj.department_column.is_some() => {
            match &user.department {
                Some(d) if scope == Scope::Department => one(Atom::Departments(vec![d.clone()])),
                Some(d) => one(Atom::Departments(snap.department_subtree(d))),
                None => RowPred::nothing(),
            }
        }
        Scope::Team if obj.team_column.is_some() && !user.teams.is_empty() => {
            one(Atom::Teams(user.teams.clone()))
        }
        Scope::Parent if obj.parent_object.is_some() => one(Atom::Parent),
        _ => RowPred::nothing(),
    }
}

fn compile_object(
    snap: &Snapshot,
    user: &User,
    obj: &Object,
    chains: &[Vec<&Role>],
) -> ObjectPolicy {
    let rel = snap.relations.get(&(obj.schema.clone(), obj.table.clone()));
    let mut actions = BTreeSet::new();
    let mut denied = BTreeSet::new();
    let no_actions = BTreeSet::new();
    let all_actions: BTreeSet<&str> = snap
        .object_actions
        .get(&obj.name)
        .unwrap_or(&no_actions)
        .iter()
        .map(String::as_str)
        .collect();
    // per chain: granted actions and row predicate
    let per_chain: Vec<(BTreeSet<String>, RowPred, &Vec<&Role>)> = chains
        .iter()
        .map(|chain| {
            let mut granted = BTreeSet::new();
            for a in &all_actions {
                match chain_permission(snap, chain, &obj.name, a) {
                    Some(Effect::Allow) => {
                        granted.insert((*a).to_owned());
                    }
                    Some(Effect::Deny) => {
                        denied.insert((*a).to_owned());
                    }
                    None => {}
                }
            }
            let pred = chain_scope(snap, chain, &obj.name)
                .map(|s| scope_pred(snap, user, obj, s))
                .unwrap_or_else(RowPred::nothing);
            (granted, pred, chain)
        })
        .collect();
    for (granted, _, _) in &per_chain {
        actions.extend(granted.iter().filter(|a| !denied.contains(*a)).cloned());
    }
    let pred_for = |pick: &dyn Fn(&BTreeSet<String>) -> bool| {
        let mut p = RowPred::nothing();
        for (granted, pred, _) in &per_chain {
            if pick(granted) {
                p.or(pred.clone());
            }
        }
        p
    };
    let denied_ref = &denied;
    let has =
        |a: &'static str| move |g: &BTreeSet<String>| g.contains(a) && !denied_ref.contains(a);
    let reads = |g: &BTreeSet<String>| {
        READ_ACTIONS
            .iter()
            .any(|a| g.contains(*a) && !denied_ref.contains(*a))
    };
    let read = pred_for(&reads);
    let create = pred_for(&has("create"));
    let edit = pred_for(&has("edit"));
    let delete = pred_for(&has("delete"));
    let columns = rel
        .map(|rel| {
            rel.columns
                .iter()
                .map(|c| {
                    let mut visible = RowPred::nothing();
                    let mut editable = RowPred::nothing();
                    let mut creatable = false;
                    let mut mask = None;
                    let mut level = FieldLevel::Invisible;
                    for (granted, pred, chain) in &per_chain {
                        let (l, m) = chain_field(snap, chain, &obj.name, &c.name);
                        if reads(granted) {
                            level = level.max(l);
                            if l == FieldLevel::Invisible {
                                mask.get_or_insert(m);
                            } else {
                                visible.or(pred.clone());
                            }
                        }
                        if l == FieldLevel::ReadWrite && has("edit")(granted) {
                            editable.or(pred.clone());
                        }
                        if l == FieldLevel::ReadWrite && has("create")(granted) {
                            creatable = true;
                        }
                    }
                    let mask = match mask.unwrap_or_default() {
                        m @ (Mask::Redact | Mask::Partial) if !c.is_text => {
                            let _ = m;
                            Mask::Null
                        }
                        m => m,
                    };
                    let read_rule = if visible.covers(&read) {
                        ColumnRead::Visible
                    } else if visible.is_nothing() {
                        ColumnRead::Hidden(mask)
                    } else {
                        ColumnRead::When(visible, mask)
                    };
                    ColumnPolicy {
                        name: c.name.clone(),
                        type_name: c.type_name.clone(),
                        is_text: c.is_text,
                        read: read_rule,
                        create: creatable,
                        edit: editable,
                        level,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ObjectPolicy {
        object: obj.name.clone(),
        schema: obj.schema.clone(),
        table: obj.table.clone(),
        primary_key: obj.primary_key.clone(),
        actions,
        denied,
        read,
        create,
        edit,
        delete,
        columns,
        owner_column: obj.owner_column.clone(),
        department_column: obj.department_column.clone(),
        team_column: obj.team_column.clone(),
        parent: match (&obj.parent_object, &obj.parent_column) {
            (Some(p), Some(c)) => Some((p.clone(), c.clone())),
            _ => None,
        },
        missing: rel.is_none(),
    }
}

/// Human-readable explanation of a user's effective permissions and why.
pub fn explain(snap: &Snapshot, user_name: &str, now: DateTime<Utc>, ip: Option<IpAddr>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some(user) = snap.user(user_name) else {
        return format!("no such user: {user_name}\n");
    };
    let _ = writeln!(
        out,
        "user {} (owner value {:?}, department {:?}, teams {:?}{})",
        user.name,
        user.owner_value,
        user.department,
        user.teams,
        if user.active { "" } else { ", DISABLED" }
    );
    let _ = writeln!(out, "catalog generation {}", snap.generation);
    let _ = writeln!(out, "assignments:");
    let groups: Vec<&str> = snap
        .catalog
        .groups
        .iter()
        .filter(|g| g.members.contains(&user.name))
        .map(|g| g.name.as_str())
        .collect();
    for a in &snap.catalog.assignments {
        let via = match (&a.user, &a.group) {
            (Some(u), _) if *u == user.name => "direct".to_owned(),
            (_, Some(g)) if groups.contains(&g.as_str()) => format!("via group {g}"),
            _ => continue,
        };
        let state = assignment_inactive_reason(a, now, ip)
            .map_or("active".to_owned(), |r| format!("inactive: {r}"));
        let _ = writeln!(out, "  - role {:?} ({via}): {state}", a.role);
    }
    let active = snap.active_assignments(&user.name, now, ip);
    let eff = compile(snap, user, &active);
    let _ = writeln!(
        out,
        "effective roles: {:?}{}",
        eff.roles,
        if eff.unrestricted {
            " (unrestricted: full access)"
        } else {
            ""
        }
    );
    for r in &eff.roles {
        let chain: Vec<&str> = snap.role_chain(r).iter().map(|r| r.name.as_str()).collect();
        if chain.len() > 1 {
            let _ = writeln!(out, "  {r} inherits {:?}", &chain[1..]);
        }
    }
    let _ = writeln!(out, "system permissions: {:?}", eff.system_permissions);
    let _ = writeln!(out, "restrictions: {:?}", eff.restrictions);
    if !user.active {
        let _ = writeln!(out, "user is disabled: cannot log in");
    }
    for o in eff.objects.values() {
        let _ = writeln!(out, "object {} ({}.{}):", o.object, o.schema, o.table);
        let _ = writeln!(out, "  actions: {:?}", o.actions);
        if !o.denied.is_empty() {
            let _ = writeln!(out, "  denied explicitly: {:?}", o.denied);
        }
        let _ = writeln!(out, "  read rows: {}", describe_pred(&o.read, o));
        let _ = writeln!(out, "  edit rows: {}", describe_pred(&o.edit, o));
        for c in &o.columns {
            let r = match &c.read {
                ColumnRead::Visible => "visible".to_owned(),
                ColumnRead::Hidden(m) => format!("invisible (mask {})", m.as_str()),
                ColumnRead::When(p, m) => format!(
                    "visible where {} else mask {}",
                    describe_pred(p, o),
                    m.as_str()
                ),
            };
            if !matches!(c.read, ColumnRead::Visible) || c.level != FieldLevel::ReadWrite {
                let _ = writeln!(out, "  field {}: {} ({})", c.name, r, c.level.as_str());
            }
        }
    }
    out
}

/// Describe a row predicate in words.
pub fn describe_pred(p: &RowPred, o: &ObjectPolicy) -> String {
    match p {
        RowPred::All => "all".into(),
        RowPred::Any(a) if a.is_empty() => "none".into(),
        RowPred::Any(atoms) => atoms
            .iter()
            .map(|a| match a {
                Atom::Owner(v) => format!("{} = {v:?}", o.owner_column.as_deref().unwrap_or("?")),
                Atom::Departments(d) => {
                    format!("{} in {d:?}", o.department_column.as_deref().unwrap_or("?"))
                }
                Atom::Teams(t) => format!("{} in {t:?}", o.team_column.as_deref().unwrap_or("?")),
                Atom::Parent => format!(
                    "parent {} visible",
                    o.parent.as_ref().map_or("?", |p| p.0.as_str())
                ),
            })
            .collect::<Vec<_>>()
            .join(" OR "),
    }
}

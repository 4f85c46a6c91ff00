//! Functions restricted users may call: built-ins that cannot read data behind pgveil's back.
//! Everything else — SQL-text execution (query_to_xml…), files, large objects, dblink, other
//! sessions (pg_stat_*), settings changes (set_config) and user-defined functions — is refused
//! unless the catalog lists it in `pgveil.safe_functions`.

use std::collections::HashSet;

use crate::error::ClientError;

const ALLOWED: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_slope",
    "regr_intercept",
    "bit_and",
    "bit_or",
    "grouping",
    // window
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "sign",
    "pi",
    "random",
    "greatest",
    "least",
    "div",
    "width_bucket",
    "gcd",
    "lcm",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "scale",
    "factorial",
    // strings
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "lower",
    "upper",
    "initcap",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "substr",
    "substring",
    "left",
    "right",
    "replace",
    "translate",
    "reverse",
    "repeat",
    "position",
    "strpos",
    "split_part",
    "concat",
    "concat_ws",
    "format",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "starts_with",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    "md5",
    "sha256",
    "encode",
    "decode",
    "chr",
    "ascii",
    "string_to_array",
    "array_to_string",
    "overlay",
    "unistr",
    "normalize",
    "to_hex",
    // dates
    "now",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    "date_bin",
    // conditionals / misc
    "coalesce",
    "nullif",
    "row",
    "num_nonnulls",
    "num_nulls",
    "gen_random_uuid",
    "uuid_in",
    // json
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "row_to_json",
    "array_to_json",
    "json_array_length",
    "jsonb_array_length",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_pretty",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_path_query",
    "jsonb_path_exists",
    "jsonb_path_match",
    // arrays and sets
    "array_length",
    "array_lower",
    "array_upper",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_position",
    "array_positions",
    "array_remove",
    "array_replace",
    "cardinality",
    "unnest",
    "generate_series",
    "generate_subscripts",
    "array_dims",
    "array_ndims",
    // sequences and identity of the session (values of this session only)
    "nextval",
    "currval",
    "lastval",
    "current_user",
    "session_user",
    "current_schema",
    "current_schemas",
    "current_database",
    "current_catalog",
    "current_setting",
    "version",
    "pg_backend_pid",
    "txid_current",
    "pg_current_xact_id",
    "inet_client_addr",
    // structural introspection used by psql, DBeaver, Metabase, SQLAlchemy
    "format_type",
    "pg_get_userbyid",
    "pg_get_expr",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_viewdef",
    "pg_get_triggerdef",
    "pg_get_functiondef",
    "pg_get_function_arguments",
    "pg_get_function_result",
    "pg_get_function_identity_arguments",
    "pg_get_serial_sequence",
    "pg_get_partkeydef",
    "pg_get_partition_constraintdef",
    "pg_get_statisticsobjdef",
    "pg_get_ruledef",
    "pg_table_is_visible",
    "pg_type_is_visible",
    "pg_function_is_visible",
    "pg_opclass_is_visible",
    "pg_collation_is_visible",
    "pg_ts_config_is_visible",
    "pg_statistics_obj_is_visible",
    "pg_conversion_is_visible",
    "pg_operator_is_visible",
    "obj_description",
    "col_description",
    "shobj_description",
    "pg_encoding_to_char",
    "pg_char_to_encoding",
    "pg_relation_is_publishable",
    "pg_get_keywords",
    "pg_typeof",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_size_pretty",
    "pg_database_size",
    "has_table_privilege",
    "has_schema_privilege",
    "has_column_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "has_sequence_privilege",
    "pg_has_role",
    "pg_is_in_recovery",
    "to_regclass",
    "to_regtype",
    "to_regproc",
    "to_regnamespace",
    "pg_tablespace_location",
    "array_in",
    "textin",
    "regclassin",
    "pg_is_other_temp_schema",
    "pg_my_temp_schema",
    "pg_postmaster_start_time",
    "pg_index_column_has_property",
    "pg_get_constraintdef",
    "pg_options_to_table",
    "pg_get_publication_tables",
    "col_has_default",
    "pg_column_is_updatable",
    "pg_relation_is_updatable",
    "pg_get_indexdef",
    "pg_sequence_parameters",
    "pg_get_function_sqlbody",
    "pg_partition_ancestors",
    "pg_partition_root",
    "pg_partition_tree",
    "pg_get_statisticsobjdef_columns",
    "pg_get_statisticsobjdef_expressions",
    "pg_relation_filenode",
    "pg_get_replica_identity_index",
    "regexp_like",
    // ARRAY(subquery) is parsed as a function call; its subquery is rewritten like any other
    "array",
];

/// Allowed only schema-qualified (an unqualified name could resolve to a user's function):
/// `_pg_expandarray` turns its array argument into (element, position) rows; pgjdbc's
/// primary-key and index metadata queries use it.
const ALLOWED_QUALIFIED: &[&str] = &["information_schema._pg_expandarray"];

/// Decide whether `name` (folded parts, optional schema) may be called.
pub fn check_function(parts: &[String], safe: &HashSet<String>) -> Result<(), ClientError> {
    let full = parts.join(".");
    // pgveil's own assertion helpers (raise an error or return true) are harmless.
    if safe.contains(&full)
        || full == "pgveil.assert_scope"
        || full == "pgveil.assert_limit"
        || ALLOWED_QUALIFIED.contains(&full.as_str())
    {
        return Ok(());
    }
    let (schema, name) = match parts {
        [name] => (None, name.as_str()),
        [schema, name] => (Some(schema.as_str()), name.as_str()),
        _ => return Err(refused(&full)),
    };
    if matches!(schema, None | Some("pg_catalog"))
        && (ALLOWED.contains(&name) || safe.contains(name))
    {
        return Ok(());
    }
    Err(refused(&full))
}

fn refused(name: &str) -> ClientError {
    ClientError::Denied {
        message: format!("permission denied for function {name}"),
        hint: Some(
            "pgveil allows built-in functions that cannot read data behind its back; \
             a DBA can allow others in pgveil.safe_functions"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_functions_are_refused() {
        let safe = HashSet::new();
        for f in [
            "query_to_xml",
            "pg_read_file",
            "lo_get",
            "dblink",
            "set_config",
            "pg_stat_get_activity",
            "pg_sleep",
        ] {
            assert!(check_function(&[f.to_owned()], &safe).is_err(), "{f}");
        }
        assert!(check_function(&["count".into()], &safe).is_ok());
        assert!(check_function(&["pg_catalog".into(), "format_type".into()], &safe).is_ok());
        assert!(
            check_function(&["public".into(), "count".into()], &safe).is_err(),
            "user schema shadowing"
        );
        let expand = |schema: &str| vec![schema.to_owned(), "_pg_expandarray".to_owned()];
        assert!(check_function(&expand("information_schema"), &safe).is_ok());
        assert!(check_function(&expand("public"), &safe).is_err());
        assert!(check_function(&["_pg_expandarray".into()], &safe).is_err());
        let safe: HashSet<String> = ["public.score".to_owned()].into();
        assert!(check_function(&["public".into(), "score".into()], &safe).is_ok());
    }
}

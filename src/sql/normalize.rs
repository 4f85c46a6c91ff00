//! Literal normalisation for the rewrite cache. Applications that inline literals (psql,
//! psycopg2, PHP) send a new SQL text for every statement; pgveil enforces the *template*
//! (literals replaced by `$n`) once, re-checks it like any rewrite, caches it, and then puts
//! the literals back, each one re-quoted by pgveil (E'' for backslashes). The enforced template
//! is cut at its placeholders once (`splice`); a placeholder is only cut where the characters
//! around it end every token, so each literal lexes as exactly one token and the statement's
//! structure is exactly the verified template's. Anything unusual (existing
//! placeholders, a template pgveil would refuse) falls back to enforcing the original text.

use std::fmt::Write;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::policy_sql::literal;

/// A statement with its literals taken out.
pub struct Normalized {
    pub template: String,
    literals: Vec<String>,
}

impl Normalized {
    /// The template and the literals taken out of it.
    pub fn into_parts(self) -> (String, Vec<String>) {
        (self.template, self.literals)
    }
}

/// Replace number and string literal tokens by `$1…$n`. None if there is nothing to gain or
/// the text already has placeholders.
pub fn normalize(sql: &str) -> Option<Normalized> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut template = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    for t in &tokens {
        let lit = match t {
            Token::Placeholder(_) => return None,
            Token::Number(n, false) => Some(n.clone()),
            Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some(literal(s)),
            Token::DollarQuotedString(d) => Some(literal(&d.value)),
            _ => None,
        };
        // Written in place: no string per token (this runs on every simple-protocol query).
        let _ = match lit {
            Some(l) => {
                literals.push(l);
                write!(template, "${}", literals.len())
            }
            None => write!(template, "{t}"),
        };
    }
    (!literals.is_empty()).then_some(Normalized { template, literals })
}

/// An enforced template cut at its placeholders, computed once per cached template, so that
/// putting literals back is plain concatenation.
#[derive(Debug)]
pub struct Splice {
    /// Text before each placeholder and the (0-based) literal that replaces it.
    parts: Vec<(String, usize)>,
    tail: String,
}

/// Characters that end any token before a placeholder, and that no pgveil literal (an
/// unsigned number, `'…'` or `E'…'`) can continue after it. A literal between two of them
/// lexes as exactly one token, so the text keeps the verified template's structure.
const SAFE_BEFORE: &[char] = &[' ', '(', ',', '['];
const SAFE_AFTER: &[char] = &[' ', ')', ',', ']', ';', ':'];

/// A placeholder may follow a delimiter, or a unary sign that itself follows one
/// (`+ -$1`: a sign glued to an operator could lex as part of it).
fn safe_before(text: &str) -> bool {
    match text.strip_suffix(['-', '+']) {
        Some(rest) => rest.ends_with(SAFE_BEFORE),
        None => text.ends_with(SAFE_BEFORE),
    }
}

/// Cut `enforced` at its placeholders. None if it does not tokenize or if a placeholder sits
/// next to a character a literal could merge with (the caller then enforces the full text).
pub fn splice(enforced: &str) -> Option<Splice> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, enforced)
        .tokenize()
        .ok()?;
    let mut parts = Vec::new();
    let mut text = String::with_capacity(enforced.len());
    let mut after_placeholder = false;
    for t in &tokens {
        let printed = t.to_string();
        if after_placeholder && !printed.starts_with(SAFE_AFTER) {
            return None;
        }
        after_placeholder = false;
        match t {
            Token::Placeholder(p) => {
                let i: usize = p.strip_prefix('$')?.parse().ok()?;
                if !safe_before(&text) {
                    return None;
                }
                parts.push((std::mem::take(&mut text), i.checked_sub(1)?));
                after_placeholder = true;
            }
            _ => text.push_str(&printed),
        }
    }
    Some(Splice { parts, tail: text })
}

impl Splice {
    /// The enforced template with the statement's literals back in place. None if the
    /// template refers to a literal the statement does not have.
    pub fn fill(&self, literals: &[String]) -> Option<String> {
        let mut out = String::with_capacity(
            self.tail.len() + self.parts.iter().map(|(t, _)| t.len() + 16).sum::<usize>(),
        );
        for (text, i) in &self.parts {
            out.push_str(text);
            out.push_str(literals.get(*i)?);
        }
        out.push_str(&self.tail);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_roundtrip_with_safe_quoting() {
        let n = normalize("SELECT * FROM t WHERE a = 5 AND b = 'x''y' AND c = 'q\\'").unwrap();
        assert_eq!(
            n.template,
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3"
        );
        let back = splice(
            "SELECT * FROM (SELECT a FROM t WHERE o = 'r') AS t WHERE a = $1 AND b = $2 AND c = $3",
        )
        .and_then(|s| s.fill(&n.literals))
        .unwrap();
        assert_eq!(back, "SELECT * FROM (SELECT a FROM t WHERE o = 'r') AS t WHERE a = 5 AND b = 'x''y' AND c = E'q\\\\'");
        assert!(normalize("SELECT $1").is_none());
        assert!(normalize("SELECT a FROM t").is_none());
        // a placeholder the template does not have is refused
        assert!(splice("SELECT $9")
            .and_then(|s| s.fill(&n.literals))
            .is_none());
        // signs: unary after a delimiter is fine, glued to an operator is not
        let n2 = normalize("UPDATE t SET a = a + -5, b = (-7)").unwrap();
        assert_eq!(n2.template, "UPDATE t SET a = a + -$1, b = (-$2)");
        let s2 = splice("UPDATE t SET a = a + -$1, b = (-$2)").unwrap();
        assert_eq!(
            s2.fill(&n2.literals).unwrap(),
            "UPDATE t SET a = a + -5, b = (-7)"
        );
        assert!(splice("SELECT a +-$1").is_none());
        // a placeholder a literal could merge with is not spliced
        assert!(splice("SELECT x.$1").is_none());
        assert!(splice("SELECT E$1").is_none() || splice("SELECT E$1").unwrap().parts.is_empty());
        assert!(splice("SELECT $1x").is_none() || splice("SELECT $1x").unwrap().parts.is_empty());
    }
}

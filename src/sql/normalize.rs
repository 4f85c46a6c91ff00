//! Literal normalisation for the rewrite cache. Applications that inline literals (psql,
//! psycopg2, PHP) send a new SQL text for every statement; pgveil enforces the *template*
//! (literals replaced by `$n`) once, re-checks it like any rewrite, caches it, and then puts
//! the literals back token for token, each one re-quoted by pgveil (E'' for backslashes), so
//! the statement's structure is exactly the verified template's. Anything unusual (existing
//! placeholders, a template pgveil would refuse) falls back to enforcing the original text.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::policy_sql::literal;

/// A statement with its literals taken out.
pub struct Normalized {
    pub template: String,
    literals: Vec<String>,
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
        match lit {
            Some(l) => {
                literals.push(l);
                template.push_str(&format!("${}", literals.len()));
            }
            None => template.push_str(&t.to_string()),
        }
    }
    (!literals.is_empty()).then_some(Normalized { template, literals })
}

/// Put the literals back into an enforced template. Every `$n` placeholder token is replaced
/// by literal n; any other token is kept. None if the template does not tokenize.
pub fn denormalize(n: &Normalized, enforced: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, enforced)
        .tokenize()
        .ok()?;
    let mut out = String::with_capacity(enforced.len() + 64);
    for t in &tokens {
        match t {
            Token::Placeholder(p) => {
                let i: usize = p.strip_prefix('$')?.parse().ok()?;
                out.push_str(n.literals.get(i.checked_sub(1)?)?);
            }
            other => out.push_str(&other.to_string()),
        }
    }
    same_structure(&tokens, &out).then_some(out)
}

/// The final text must tokenize exactly like the verified template, with a literal exactly
/// where the template has a placeholder (the printer is not trusted, not even for tokens).
fn same_structure(template: &[Token], text: &str) -> bool {
    let Ok(final_tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else {
        return false;
    };
    let significant = |ts: &[Token]| -> Vec<Token> {
        ts.iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .cloned()
            .collect()
    };
    let (a, b) = (significant(template), significant(&final_tokens));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(t, f)| match t {
            Token::Placeholder(_) => matches!(
                f,
                Token::Number(_, false)
                    | Token::SingleQuotedString(_)
                    | Token::EscapedStringLiteral(_)
            ),
            other => other == f,
        })
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
        let back = denormalize(
            &n,
            "SELECT * FROM (SELECT a FROM t WHERE o = 'r') AS t WHERE a = $1 AND b = $2 AND c = $3",
        )
        .unwrap();
        assert_eq!(back, "SELECT * FROM (SELECT a FROM t WHERE o = 'r') AS t WHERE a = 5 AND b = 'x''y' AND c = E'q\\\\'");
        assert!(normalize("SELECT $1").is_none());
        assert!(normalize("SELECT a FROM t").is_none());
        // a placeholder the template does not have is refused
        assert!(denormalize(&n, "SELECT $9").is_none());
    }
}

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

/// A cheaper first look for plain statements, done before `normalize` on every simple-protocol
/// query: the text with each literal replaced by a bare `$` (its *shape*), and the literals
/// exactly as `normalize` returns them (none for `BEGIN`: the caller then uses the text).
/// None for anything but plain ASCII text whose literals are unsigned numbers (`12`, `1.5`)
/// or `'…'` strings without backslashes: no `$` outside strings, no comments, no prefixed
/// strings (`E'…'`, `U&'…'`), no string continuation, no number glued to a letter or a dot.
/// Within that subset two texts with the same shape differ only inside literal tokens, so
/// they lex alike; `RewriteCache::enforce_simple` still trusts a shape only after the first
/// text seen with it gave the very same literals through `normalize`.
pub fn quick(sql: &str) -> Option<(String, Vec<String>)> {
    let b = sql.as_bytes();
    if !sql.is_ascii() {
        return None;
    }
    let mut shape = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        let (end, value) = match b[i] {
            b'$' | b'\\' => return None,
            b'-' | b'/' if matches!(b.get(i + 1), Some(b'-' | b'*')) => return None,
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'"' => {
                let end = quoted_end(b, i, b'"')?;
                if b[i..end].contains(&b'$') {
                    return None; // keeps `$` in a shape a literal's mark, and only that
                }
                i = end;
                continue;
            }
            b'\'' if i > 0 && (is_word(b[i - 1]) || b[i - 1] == b'&') => return None,
            b'\'' => {
                let end = quoted_end(b, i, b'\'')?;
                if b[i..end].contains(&b'\\') {
                    return None; // its meaning depends on standard_conforming_strings
                }
                let next = b[end..].iter().find(|c| !c.is_ascii_whitespace());
                if next == Some(&b'\'') || b.get(end).is_some_and(|&c| glues(c)) {
                    return None; // 'a' 'b' continuation, or a token glued to the literal
                }
                (end, literal(&sql[i + 1..end - 1].replace("''", "'")))
            }
            c if c.is_ascii_digit() && (i == 0 || !is_word(b[i - 1])) => {
                let end = number_end(b, i);
                if b.get(end).is_some_and(|&c| glues(c)) {
                    return None; // 1e5, 0x1F, 1_000, 1.
                }
                (end, sql[i..end].to_owned())
            }
            _ => {
                i += 1;
                continue;
            }
        };
        shape.push_str(&sql[copied..i]);
        shape.push('$');
        literals.push(value);
        (i, copied) = (end, end);
    }
    shape.push_str(&sql[copied..]);
    Some((shape, literals))
}

/// Characters of a word (identifier, keyword): a literal may neither follow nor precede one.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// Characters that would continue a literal or change how it lexes.
fn glues(c: u8) -> bool {
    is_word(c) || matches!(c, b'.' | b'\'' | b'"')
}

/// The position after the quote closing the quoted token that starts at `start` (a doubled
/// quote stands for itself). None if it is not closed.
fn quoted_end(b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut j = start + 1;
    loop {
        j += b.get(j..)?.iter().position(|&c| c == quote)?;
        if b.get(j + 1) == Some(&quote) {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

/// The end of the unsigned number `digits[.digits]` that starts at `start`.
fn number_end(b: &[u8], start: usize) -> usize {
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let end = digits(start);
    if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit) {
        digits(end + 1)
    } else {
        end
    }
}

/// An enforced template cut at its placeholders, computed once per cached template, so that
/// putting literals back is plain concatenation.
#[derive(Debug)]
pub struct Splice {
    /// Text before each placeholder and the (0-based) literal that replaces it.
    parts: Vec<(String, usize)>,
    tail: String,
    /// The template as a prepared statement, when its literals can be bound as parameters.
    pub bind: Option<super::bind::BindPlan>,
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
    Some(Splice {
        parts,
        tail: text,
        bind: None,
    })
}

impl Splice {
    pub fn with_bind(mut self, bind: Option<super::bind::BindPlan>) -> Splice {
        self.bind = bind;
        self
    }

    /// Does every placeholder refer to one of `n` literals?
    pub fn fits(&self, n: usize) -> bool {
        self.parts.iter().all(|(_, i)| *i < n)
    }

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

    /// `quick` agrees with `normalize` wherever it answers, and declines what it cannot lex.
    #[test]
    fn quick_shapes_agree_with_normalize() {
        let plain = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
            "select * from t where a = 5 and b = 'x''y' and c = 1.25 limit 10",
            "SELECT \"weird \"\"5\"\" col\" FROM t1 WHERE t1.c2 = 'it''s' OR x IN (1,2, 3)",
            "UPDATE t SET a = a + -5, b = (-7), c = 'q'::text WHERE id = 3;",
            "INSERT INTO t (a, b) VALUES ('--not a comment', '/* nor this */')",
            "SELECT 'multi\nline' FROM t WHERE a=1",
            "SELECT x FROM t WHERE a>=2 AND b<>'' AND c=ARRAY[1,2]",
        ];
        for sql in plain {
            let (shape, lits) = quick(sql).unwrap_or_else(|| panic!("quick declined {sql}"));
            let (_, full) = normalize(sql).unwrap().into_parts();
            assert_eq!(lits, full, "{sql}");
            assert_eq!(shape.matches('$').count(), lits.len(), "{sql}");
        }
        assert_eq!(quick("SELECT a FROM t1").unwrap().1.len(), 0);
        let (shape, lits) = quick("SELECT a FROM t WHERE id = 12 AND n = 'o''k'").unwrap();
        assert_eq!(shape, "SELECT a FROM t WHERE id = $ AND n = $");
        assert_eq!(lits, ["12", "'o''k'"]);
        let declined = [
            "SELECT $1",                 // placeholders
            "SELECT $$x$$",              // dollar quotes
            "SELECT E'a\\'' OR 1=1 --'", // prefixed string, backslash
            "SELECT 'a\\'' OR 1=1 --'",  // backslash (depends on settings)
            "SELECT 1 -- comment",       // comments
            "SELECT 1 /* comment */",
            "SELECT 'a'\n'b'", // string continuation
            "SELECT U&'d0061'",
            "SELECT B'101', X'1F', N'x'",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1.",
            "SELECT .5",
            "SELECT 'a'b",
            "SELECT 5'x'",
            "SELECT 'ünïcode' FROM t WHERE a = 1",
            "SELECT 'open",
            "SELECT \"open = 1",
        ];
        for sql in declined {
            assert!(quick(sql).is_none(), "quick accepted {sql}");
        }
    }

    /// Random texts over an alphabet of lexing hazards: wherever `quick` answers, `normalize`
    /// finds the same literals, and any other literals in the same shape give the same template.
    #[test]
    fn quick_shapes_lex_alike_whatever_the_literals() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        const PIECES: &[&str] = &[
            "a", "1", "7.5", "'", "''", "\"", " ", ".", "-", "(", ")", "=", "e", "\n", ";", ":",
            "_", "'x'", "E", "&", "/", "*", "+", "SELECT ", "x1", "\\", "0", "$",
        ];
        let mut r = StdRng::seed_from_u64(7);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let sql: String = (0..r.gen_range(1..14))
                .map(|_| PIECES[r.gen_range(0..PIECES.len())])
                .collect();
            let Some((shape, lits)) = quick(&sql) else {
                continue;
            };
            if lits.is_empty() {
                // enforced as it is (always safe); the lexer finds no literal either
                assert!(
                    normalize(&sql).is_none(),
                    "{sql:?}: a literal the scan missed"
                );
                continue;
            }
            let Some(n) = normalize(&sql) else {
                continue; // sqlparser cannot lex it: the shape is never trusted
            };
            accepted += 1;
            let (template, full) = n.into_parts();
            assert_eq!(lits, full, "{sql:?}");
            let mut other = String::new();
            for (i, part) in shape.split('$').enumerate() {
                if i > 0 {
                    other.push_str(if i % 2 == 0 {
                        "98765.4"
                    } else {
                        "'z''$--/*\"'"
                    });
                }
                other.push_str(part);
            }
            let Some((shape2, _)) = quick(&other) else {
                continue; // declined (a string after `&`): the full path takes it
            };
            assert_eq!(shape2, shape);
            let (template2, _) = normalize(&other)
                .unwrap_or_else(|| panic!("{sql:?} lexes, {other:?} does not"))
                .into_parts();
            assert_eq!(template2, template, "{sql:?} vs {other:?}");
        }
        assert!(accepted > 1_000, "only {accepted} accepted");
    }
}

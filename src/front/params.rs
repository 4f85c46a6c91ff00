//! Which startup parameters reach PostgreSQL. A setting a user may change with `SET`
//! (`crate::sql::settable`: timeouts, date and number formats, …) is passed on, whether it
//! comes as its own parameter or inside `options` (`-c name=value`, `--name=value`, as
//! PostgreSQL reads them); `options` itself never is, nor anything else (`search_path` is
//! pinned, `role` and server switches are not the client's to choose). What is left out is
//! named to the client in a warning, never silently lost; values are never echoed.

/// Parameters pgveil reads itself (or refuses) rather than passing on.
const HANDLED: &[&str] = &["user", "database", "client_encoding", "replication"];

/// The startup parameters sorted into those passed on and the names of those left out.
#[derive(Debug, Default, PartialEq)]
pub struct Sorted {
    pub forwarded: Vec<(String, String)>,
    pub left_out: Vec<String>,
}

/// Sort a startup packet's parameters (`_pq_.*` protocol options are negotiated apart).
pub fn sort<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> Sorted {
    let mut sorted = Sorted::default();
    for (name, value) in params {
        if HANDLED.contains(&name.as_str()) || name.starts_with("_pq_.") {
            continue;
        }
        if name == "options" {
            from_options(value, &mut sorted);
        } else {
            sorted.offer(name, value, name);
        }
    }
    sorted.left_out.dedup();
    sorted
}

impl Sorted {
    /// Pass the setting on if a user may change it, else name it (as `shown`).
    fn offer(&mut self, name: &str, value: &str, shown: &str) {
        if crate::sql::settable(name) {
            self.forwarded.push((name.to_owned(), value.to_owned()));
        } else {
            self.left_out.push(shown.to_owned());
        }
    }
}

/// The settings inside `options`, as PostgreSQL splits it (whitespace separates, a backslash
/// takes the next character as it is): `-c name=value`, `-cname=value`, `--name=value` (a
/// `-` in the name read as `_`). Other switches are named without their arguments.
fn from_options(options: &str, sorted: &mut Sorted) {
    let words = split(options);
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let setting = if let Some(long) = word.strip_prefix("--") {
            long.to_owned()
        } else if word == "-c" {
            match words.next() {
                Some(next) => next.clone(),
                None => continue,
            }
        } else if let Some(short) = word.strip_prefix("-c") {
            short.to_owned()
        } else if word.starts_with('-') {
            let switch: String = word.chars().take(2).collect();
            sorted.left_out.push(format!("options {switch}"));
            continue;
        } else {
            continue; // the argument of a switch named above
        };
        match setting.split_once('=') {
            Some((name, value)) => {
                let name = name.replace('-', "_");
                sorted.offer(&name, value, &format!("options -c {name}"));
            }
            None => sorted.left_out.push("options".into()),
        }
    }
}

/// PostgreSQL's `pg_split_opts`.
fn split(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
            match c {
                '\\' => word.extend(chars.next()),
                c => word.push(c),
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(params: &[(&str, &str)]) -> Sorted {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        sort(owned.iter().map(|(k, v)| (k, v)))
    }

    #[test]
    fn settable_parameters_pass_and_the_rest_is_named() {
        let s = sorted(&[
            ("user", "rita"),
            ("database", "crm"),
            ("application_name", "app"),
            ("DateStyle", "ISO"),
            ("statement_timeout", "5s"),
            ("search_path", "evil"),
            ("role", "postgres"),
            ("_pq_.x", "1"),
        ]);
        assert_eq!(
            s.forwarded,
            [
                ("application_name".into(), "app".into()),
                ("DateStyle".into(), "ISO".into()),
                ("statement_timeout".into(), "5s".into())
            ]
        );
        assert_eq!(s.left_out, ["search_path", "role"]);
    }

    #[test]
    fn options_are_read_as_postgresql_reads_them() {
        let s = sorted(&[(
            "options",
            r"-c statement_timeout=1234 --lock-timeout=2s -capplication_name=a\ b -d 5 -c search_path=x -c role=y -B 100 -c",
        )]);
        assert_eq!(
            s.forwarded,
            [
                ("statement_timeout".into(), "1234".into()),
                ("lock_timeout".into(), "2s".into()),
                ("application_name".into(), "a b".into())
            ]
        );
        assert_eq!(
            s.left_out,
            [
                "options -d",
                "options -c search_path",
                "options -c role",
                "options -B"
            ]
        );
        assert_eq!(split(r"  a\\b\ c  x"), [r"a\b c", "x"]);
        assert_eq!(sorted(&[("options", "")]), Sorted::default());
    }
}

//! Parsing files that people write (meshd.toml, service files, route files) into typed
//! models, so that every mistake is reported as `FILE:LINE: KEY: what is wrong`.
//!
//! Parsing is two steps. [`parse`] deserializes with serde (unknown keys are errors
//! because every model uses `deny_unknown_fields`) and turns serde's error into an
//! [`InputError`] naming the key path and the line. Models then validate what serde
//! cannot express and report through [`Source::error`], which finds a key path's line in
//! the same text. Key paths are written as serde_path_to_error prints them:
//! `dns.ttl`, `service[1].check.interval`.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Value};

/// A file that could not be accepted, with where and why. Its `Display` is the one line
/// that meshd and meshctl print before exiting with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line of the offending key or value, when it could be found.
    pub line: Option<usize>,
    /// The key path (`dns.ttl`, `service[0].port`), when the error is about one key.
    pub key: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match &self.key {
            Some(key) if !self.message.contains(&format!("'{key}'")) => {
                write!(f, ": {key}: {}", self.message)
            }
            _ => write!(f, ": {}", self.message),
        }
    }
}

/// The text of one input file, kept to report validation errors by key path.
pub struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source { file, text }
    }

    /// An error about the key at `path`, with the line where that key is written
    /// (or no line, if the key was left out and took its default).
    pub fn error(&self, path: &str, message: impl Into<String>) -> InputError {
        InputError {
            file: self.file.to_owned(),
            line: span_of_path(self.text, path).map(|s| line_of(self.text, s.start)),
            key: (!path.is_empty()).then(|| path.to_owned()),
            message: message.into(),
        }
    }

    /// Deserializes the whole file into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        let de = toml::Deserializer::new(self.text);
        serde_path_to_error::deserialize(de).map_err(|err| self.serde_error(err))
    }

    fn serde_error(&self, err: serde_path_to_error::Error<toml::de::Error>) -> InputError {
        let path = err.path().to_string();
        let path = if path == "." || path == "?" { String::new() } else { path };
        let inner = err.into_inner();
        let line = inner.span().map(|s| line_of(self.text, s.start));
        let message = inner.message().trim().to_owned();

        if let Some(unknown) = unknown_field(&message) {
            let key = join_path(&path, &unknown.name);
            let mut message = format!("unknown key '{}'", unknown.name);
            if let Some(close) = closest(&unknown.name, &unknown.expected) {
                message.push_str(&format!(" (did you mean '{close}'?)"));
            }
            return InputError {
                file: self.file.to_owned(),
                line: line.or_else(|| span_of_path(self.text, &key).map(|s| line_of(self.text, s.start))),
                key: Some(key),
                message,
            };
        }
        if let Some(missing) = missing_field(&message) {
            let key = join_path(&path, missing);
            return InputError {
                file: self.file.to_owned(),
                line: span_of_path(self.text, &path).map(|s| line_of(self.text, s.start)).or(line),
                key: Some(key.clone()),
                message: format!("missing key '{key}'"),
            };
        }
        InputError {
            file: self.file.to_owned(),
            line: line.or_else(|| span_of_path(self.text, &path).map(|s| line_of(self.text, s.start))),
            key: (!path.is_empty()).then_some(path),
            message,
        }
    }
}

/// Deserializes `text` (the contents of `file`) into `T`, naming file, line and key on error.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, InputError> {
    Source::new(file, text).parse()
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else if parent.ends_with(&format!(".{key}")) || parent == key {
        parent.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Unknown {
    name: String,
    expected: Vec<String>,
}

/// serde's words: "unknown field `bnid`, expected one of `node_name`, `bind`".
fn unknown_field(message: &str) -> Option<Unknown> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    Some(Unknown { name: name.to_owned(), expected })
}

/// serde's words: "missing field `port`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The expected key nearest to a misspelt one, if it is near enough to be a typo.
fn closest<'e>(name: &str, expected: &'e [String]) -> Option<&'e str> {
    expected
        .iter()
        .map(|e| (edit_distance(name, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let swap = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + swap).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

/// Splits `service[1].check.interval` into keys and indexes.
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (index, after) = r.split_once(']')?;
            out.push(Segment::Index(index.parse().ok()?));
            rest = after;
        }
    }
    Some(out)
}

/// The span where the key at `path` is written in `text`, or the nearest enclosing
/// table or element that is written, if the key itself is absent.
fn span_of_path(text: &str, path: &str) -> Option<Range<usize>> {
    let doc = ImDocument::parse(text).ok()?;
    let mut at = Node::Item(doc.as_item());
    let mut best = None;
    for seg in segments(path)? {
        let (span, next) = match (seg, at) {
            (Segment::Key(k), Node::Item(Item::Table(t))) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), Node::Item(item)),
                None => break,
            },
            (Segment::Key(k), Node::Item(Item::Value(Value::InlineTable(t))))
            | (Segment::Key(k), Node::Value(Value::InlineTable(t))) => match t.get_key_value(k) {
                Some((key, value)) => (key.span().or_else(|| value.span()), Node::Item(value)),
                None => break,
            },
            (Segment::Index(i), Node::Item(Item::ArrayOfTables(a))) => match a.get(i) {
                Some(t) => (t.span(), Node::Table(t)),
                None => break,
            },
            (Segment::Index(i), Node::Item(Item::Value(Value::Array(a))))
            | (Segment::Index(i), Node::Value(Value::Array(a))) => match a.get(i) {
                Some(v) => (v.span(), Node::Value(v)),
                None => break,
            },
            (Segment::Key(k), Node::Table(t)) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), Node::Item(item)),
                None => break,
            },
            _ => break,
        };
        if span.is_some() {
            best = span;
        }
        at = next;
    }
    best
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Table(&'d toml_edit::Table),
    Value(&'d Value),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        bind: Option<String>,
        #[serde(default)]
        dns: Dns,
        #[serde(default)]
        service: Vec<Svc>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Dns {
        #[serde(default, with = "crate::duration::option")]
        ttl: Option<std::time::Duration>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Svc {
        name: String,
        port: u16,
    }

    fn err(text: &str) -> InputError {
        parse::<Top>("meshd.toml", text).expect_err("should fail")
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err("bnid = \"x\"\n");
        assert_eq!(e.to_string(), "meshd.toml:1: unknown key 'bnid' (did you mean 'bind'?)");
        assert_eq!(e.key.as_deref(), Some("bnid"));
    }

    #[test]
    fn unknown_nested_key() {
        let e = err("bind = \"x\"\n\n[dns]\nttl = \"5s\"\ndomian = \"mesh\"\n");
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("dns.domian"));
    }

    #[test]
    fn wrong_type_in_array_of_tables() {
        let e = err("[[service]]\nname = \"a\"\nport = 1\n\n[[service]]\nname = \"b\"\nport = \"http\"\n");
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.key.as_deref(), Some("service[1].port"));
        assert!(e.to_string().starts_with("meshd.toml:7: service[1].port: invalid type"), "{e}");
    }

    #[test]
    fn bad_duration() {
        let e = err("[dns]\nttl = \"5 parsecs\"\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("dns.ttl"));
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn missing_key() {
        let e = err("[[service]]\nname = \"a\"\n");
        assert_eq!(e.key.as_deref(), Some("service[0].port"));
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err("bind = \"x\"\n[dns\n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn validation_errors_find_their_line() {
        let text = "bind = \"x\"\n[[service]]\nname = \"a\"\nport = 1\n[[service]]\nname = \"b\"\nport = 2\n";
        let src = Source::new("meshd.toml", text);
        assert_eq!(src.error("service[1].port", "no").line, Some(7));
        assert_eq!(src.error("service[1]", "no").line, Some(5));
        assert_eq!(src.error("bind", "no").line, Some(1));
        assert_eq!(src.error("dns.ttl", "no").line, None);
    }

    #[test]
    fn inline_tables_and_arrays() {
        let text = "a = 1\nsvc = { check = { http = \"x\" } }\nlist = [\n  1,\n  2,\n]\n";
        let src = Source::new("f.toml", text);
        assert_eq!(src.error("svc.check.http", "no").line, Some(2));
        assert_eq!(src.error("list[1]", "no").line, Some(5));
    }
}

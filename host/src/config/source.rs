//! Where configuration values come from: the TOML tree with the `CAMPAIGN_PUSH__…` environment
//! overrides merged on top, read key by key.
//!
//! Reading never stops at the first mistake: every problem is recorded against its dotted key (and
//! the environment variable that set it), the read returns a placeholder, and the caller turns a
//! non-empty problem list into one error. Keys nobody read are reported as unknown at the end, so a
//! misspelt key in the file or the environment cannot be silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use toml::{Table, Value};

use super::Problem;
use super::duration::parse_duration;
use super::secret::Secret;

/// The prefix of every environment override. `__` separates levels; names are case-insensitive.
pub const ENV_PREFIX: &str = "CAMPAIGN_PUSH__";

/// The section whose keys are librdkafka property names rather than our own.
const PROPERTIES: &str = "kafka.properties";

/// A value that was present but unusable; its problem has already been recorded.
pub(super) struct Invalid;

pub(super) struct Source {
    tree: Table,
    /// Dotted key -> the environment variable that set it, for error messages.
    from_env: BTreeMap<String, String>,
    /// Every section a read has looked into; leftovers elsewhere are unknown keys.
    sections: BTreeSet<String>,
    problems: Vec<Problem>,
}

impl Source {
    pub(super) fn new(tree: Table) -> Self {
        Self {
            tree,
            from_env: BTreeMap::new(),
            sections: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Lays `CAMPAIGN_PUSH__A__B=value` over the tree as `a.b = "value"`; other variables are
    /// ignored. Under `kafka.properties` the rest of the name becomes a librdkafka property name:
    /// lower case, `_` and `__` read as `.` (`…__PROPERTIES__STATISTICS_INTERVAL_MS`).
    pub(super) fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
        for (var, value) in env {
            let Some(rest) = strip_prefix_ignore_case(&var, ENV_PREFIX) else {
                continue;
            };
            let mut path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                self.problems.push(Problem::new(
                    &path.join("."),
                    Some(&var),
                    "empty level in the name; separate levels with exactly two underscores",
                ));
                continue;
            }
            if path.len() > 2 && path[..2].join(".") == PROPERTIES {
                let property = path.split_off(2).join(".").replace('_', ".");
                path.push(property);
            }
            let key = path.join(".");
            if let Some(first) = self.from_env.get(&key) {
                let message = format!("also set by {first}; set it once");
                self.problems.push(Problem::new(&key, Some(&var), message));
                continue;
            }
            if let Err(message) = insert(&mut self.tree, &path, Value::String(value)) {
                self.problems.push(Problem::new(&key, Some(&var), message));
                continue;
            }
            self.from_env.insert(key, var);
        }
    }

    /// Records a problem with `key`, naming the environment variable if one set it.
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let var = self.from_env.get(key).cloned();
        self.problems
            .push(Problem::new(key, var.as_deref(), message));
    }

    /// Removes and returns the raw value at the dotted `key`.
    fn take(&mut self, key: &str) -> Option<Value> {
        let mut table = &mut self.tree;
        let mut path = String::new();
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                return table.remove(part);
            }
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            self.sections.insert(path.clone());
            match table.get(part) {
                None => return None,
                Some(Value::Table(_)) => {}
                Some(other) => {
                    let message = format!("expected a table of keys, got {}", kind(other));
                    table.remove(part);
                    let var = self.from_env.get(&path).cloned();
                    self.problems
                        .push(Problem::new(&path, var.as_deref(), message));
                    return None;
                }
            }
            let Some(Value::Table(next)) = table.get_mut(part) else {
                unreachable!("checked above")
            };
            table = next;
        }
        None
    }

    /// An optional key: `Ok(None)` if absent, `Err(Invalid)` if `parse` refused it.
    pub(super) fn opt<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Result<Option<T>, Invalid> {
        match self.take(key).map(parse) {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value)),
            Some(Err(message)) => {
                self.problem(key, message);
                Err(Invalid)
            }
        }
    }

    /// A key with a default; an invalid value yields the default after recording its problem.
    pub(super) fn or<T>(
        &mut self,
        key: &str,
        default: T,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> T {
        self.opt(key, parse).ok().flatten().unwrap_or(default)
    }

    /// A required key; `None` (after recording the problem) if missing or invalid.
    pub(super) fn req<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.opt(key, parse) {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.problem(key, "required key is missing");
                None
            }
            Err(Invalid) => None,
        }
    }

    /// Drops `key` unread: used where an earlier problem makes judging it pointless.
    pub(super) fn skip(&mut self, key: &str) {
        self.take(key);
    }

    /// Refuses `key` if present: it does not apply to the configuration as given.
    pub(super) fn forbid(&mut self, key: &str, why: &str) {
        if self.take(key).is_some() {
            self.problem(key, format!("not used {why}; remove it"));
        }
    }

    /// A table whose keys are free-form; nested tables flatten to dotted names, so that TOML's
    /// `linger.ms = 5` means the property `linger.ms`. Values become strings.
    pub(super) fn string_table(&mut self, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match self.take(key) {
            None => {}
            Some(Value::Table(table)) => self.flatten(key, "", table, &mut out),
            Some(other) => {
                self.problem(key, format!("expected a table, got {}", kind(&other)));
            }
        }
        out
    }

    fn flatten(
        &mut self,
        key: &str,
        prefix: &str,
        table: Table,
        out: &mut BTreeMap<String, String>,
    ) {
        for (name, value) in table {
            let name = format!("{prefix}{name}");
            let text = match value {
                Value::String(s) => s,
                Value::Integer(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Boolean(b) => b.to_string(),
                Value::Table(inner) => {
                    self.flatten(key, &format!("{name}."), inner, out);
                    continue;
                }
                other => {
                    let message = format!("expected a string, got {}", kind(&other));
                    self.problem(&format!("{key}.{name}"), message);
                    continue;
                }
            };
            out.insert(name, text);
        }
    }

    /// Reports what nobody read as unknown, and returns every problem.
    pub(super) fn finish(mut self) -> Vec<Problem> {
        let tree = std::mem::take(&mut self.tree);
        self.report_unknown("", tree);
        self.problems
    }

    fn report_unknown(&mut self, prefix: &str, table: Table) {
        for (name, value) in table {
            let key = format!("{prefix}{name}");
            match value {
                Value::Table(inner) if !inner.is_empty() => {
                    self.report_unknown(&format!("{key}."), inner)
                }
                Value::Table(_) if self.sections.contains(&key) => {}
                Value::Table(_) => self.problem(&key, "unknown section"),
                _ => self.problem(&key, "unknown key"),
            }
        }
    }
}

/// Sets `path` to `value`, creating tables on the way.
fn insert(tree: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("split on a string is never empty");
    let mut table = tree;
    for (depth, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(next) = entry else {
            let section = path[..=depth].join(".");
            return Err(format!("{section} is a value in the file, not a section"));
        };
        table = next;
    }
    if let Some(Value::Table(_)) = table.get(last) {
        return Err("this is a section; set its keys instead".to_owned());
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// What a value is, for messages; never the value itself.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

// ----- value parsers: each refuses with a message that names no secret -----

/// Any string, possibly empty.
pub(super) fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", kind(&other))),
    }
}

/// A string with something in it.
pub(super) fn text(value: Value) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(s)
}

/// A credential. The refusal never repeats the value.
pub(super) fn secret(value: Value) -> Result<Secret, String> {
    match value {
        Value::String(s) if s.is_empty() => Err("must not be empty".to_owned()),
        Value::String(s) => Ok(Secret::new(s)),
        other => Err(format!("expected a string, got {}", kind(&other))),
    }
}

/// An integer in `T`'s range that is at least `min`; environment strings are parsed.
pub(super) fn integer<T>(min: T) -> impl FnOnce(Value) -> Result<T, String>
where
    T: TryFrom<i64> + PartialOrd + std::fmt::Display,
{
    move |value| {
        let n = match value {
            Value::Integer(n) => n,
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("expected an integer, got {s:?}"))?,
            other => return Err(format!("expected an integer, got {}", kind(&other))),
        };
        match T::try_from(n) {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("{n} is out of range (at least {min})")),
        }
    }
}

/// A humane duration (`"10s"`) of at least `min`.
pub(super) fn duration(
    min: std::time::Duration,
) -> impl FnOnce(Value) -> Result<std::time::Duration, String> {
    move |value| {
        let s = string(value)?;
        let d = parse_duration(&s).map_err(|e| format!("{s:?}: {e}"))?;
        if d < min {
            return Err(format!("{s:?} is too short (at least {min:?})"));
        }
        Ok(d)
    }
}

/// One of a fixed set of names, compared case-insensitively.
pub(super) fn one_of<T: Copy>(
    choices: &'static [(&'static str, T)],
) -> impl FnOnce(Value) -> Result<T, String> {
    move |value| {
        let s = string(value)?;
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&s))
            .map(|&(_, choice)| choice)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!("expected one of {}, got {s:?}", names.join(", "))
            })
    }
}

/// The path of an existing, readable regular file.
pub(super) fn readable_file(value: Value) -> Result<PathBuf, String> {
    let path = PathBuf::from(text(value)?);
    let file =
        std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    Ok(path)
}

/// A readable PEM file holding at least one X.509 certificate (a CA bundle).
pub(super) fn ca_file(value: Value) -> Result<PathBuf, String> {
    let path = readable_file(value)?;
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(path),
        _ => Err(format!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )),
    }
}

/// Reads `{section}.password` or `{section}.password_file` (exactly one) into a secret. A password
/// file's trailing line break is dropped. `None` means neither was given (the caller decides
/// whether that is a problem); an invalid or doubled value yields a placeholder.
pub(super) fn password(source: &mut Source, section: &str) -> Option<Secret> {
    let key = format!("{section}.password");
    let file_key = format!("{section}.password_file");
    let inline = source.opt(&key, secret);
    let file = source.opt(&file_key, readable_file);
    match (inline, file) {
        (Ok(Some(_)), Ok(Some(_))) => {
            source.problem(&key, format!("give either {key} or {file_key}, not both"));
            Some(Secret::new(""))
        }
        (Ok(Some(password)), Ok(None)) => Some(password),
        (Ok(None), Ok(Some(path))) => match std::fs::read_to_string(&path) {
            Ok(content) => {
                let trimmed = content.strip_suffix('\n').unwrap_or(&content);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                if trimmed.is_empty() {
                    source.problem(&file_key, format!("{} is empty", path.display()));
                }
                Some(Secret::new(trimmed))
            }
            Err(e) => {
                let message = format!("cannot read {} as UTF-8 text: {e}", path.display());
                source.problem(&file_key, message);
                Some(Secret::new(""))
            }
        },
        (Ok(None), Ok(None)) => None,
        _ => Some(Secret::new("")),
    }
}

//! The reading vocabulary shared by every level of the document: a map's keys taken one by
//! one (so what is left over is known to be unknown), GoCD's coercion of text into booleans
//! and integers, `#{param}` substitution, names, and the issues collected on the way.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::pipeline_config::ConfigIssue;

use super::loader::{Entry, Node, Value, key_path};

/// What a map's leftover keys are: refused (the top level, tasks and materials, where a lost
/// key changes what runs) or accepted with a warning (everywhere else, as real files carry
/// some GoCD silently drops).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    Refused,
    Warned,
}

/// Errors and warnings as they are found, and the parameters of the pipeline being read.
#[derive(Default)]
pub struct Reader {
    pub errors: Vec<ConfigIssue>,
    pub warnings: Vec<ConfigIssue>,
    /// `Some` inside a pipeline: its `parameters`, substituted into its strings.
    pub params: Option<BTreeMap<String, String>>,
    /// The lines where an unquoted `key: #{…}` made the value a YAML comment (so empty).
    pub commented_params: BTreeSet<u32>,
}

/// A map being read: its entries and which of them have been taken.
pub struct Fields<'n> {
    pub path: String,
    pub line: u32,
    entries: &'n [Entry],
    taken: Vec<bool>,
}

impl<'n> Fields<'n> {
    pub fn new(entries: &'n [Entry], path: &str, line: u32) -> Fields<'n> {
        Fields {
            path: path.to_string(),
            line,
            entries,
            taken: vec![false; entries.len()],
        }
    }

    /// The key's value, if present and not empty (GoCD reads `key:` as absent). Either way
    /// the key counts as read.
    pub fn get(&mut self, key: &str) -> Option<&'n Node> {
        self.get_entry(key)
            .map(|e| &e.value)
            .filter(|v| !v.is_null())
    }

    /// The key's entry, null or not.
    pub fn get_entry(&mut self, key: &str) -> Option<&'n Entry> {
        let at = self.entries.iter().position(|e| e.key == key)?;
        self.taken[at] = true;
        Some(&self.entries[at])
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }

    pub fn path_of(&self, key: &str) -> String {
        key_path(&self.path, key)
    }

    pub fn line_of(&self, key: &str) -> u32 {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map_or(self.line, |e| e.key_line)
    }

    pub fn entries(&self) -> &'n [Entry] {
        self.entries
    }

    /// Reports the keys nobody took, with a suggestion from `known` where one is close.
    pub fn finish(&self, reader: &mut Reader, leftovers: Leftovers, known: &[&str]) {
        for (entry, taken) in self.entries.iter().zip(&self.taken) {
            if *taken {
                continue;
            }
            let path = key_path(&self.path, &entry.key);
            let mut message = format!("unknown key `{}`", entry.key);
            if let Some(near) = suggestion(&entry.key, known) {
                message.push_str(&format!("; did you mean `{near}`?"));
            }
            match leftovers {
                Leftovers::Refused => reader.error(&path, entry.key_line, message),
                Leftovers::Warned => {
                    message.push_str(" (ignored, as GoCD ignores it)");
                    reader.warn(&path, entry.key_line, message);
                }
            }
        }
    }
}

/// A known key the unknown one is probably meant to be: they start alike (`args`,
/// `arguments`), or they are at most two edits apart.
fn suggestion<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = unknown.to_ascii_lowercase();
    known.iter().copied().find(|k| {
        let k_lower = k.to_ascii_lowercase();
        let shared = lower
            .chars()
            .zip(k_lower.chars())
            .take_while(|(a, b)| a == b)
            .count();
        shared >= 3 || edit_distance(&lower, &k_lower) <= 2
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

const COMMENTED_PARAM: &str =
    ": unquoted, `#{…}` starts a YAML comment; quote it (`'#{…}'`) to use the parameter";

/// The lines where a value begins with `#{` unquoted (`key: #{p}`), which YAML reads as a
/// comment: the value is empty, and the writer almost surely meant the parameter.
pub fn commented_params(text: &str) -> BTreeSet<u32> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(": #{") || line.contains(":\t#{"))
        .map(|(i, _)| u32::try_from(i + 1).unwrap_or(u32::MAX))
        .collect()
}

/// The names met so far in one scope, for GoCD's duplicate check (ignoring case). Kept apart
/// from what was read, so a duplicate of a name whose entry had errors is still one.
#[derive(Default)]
pub struct Names(Vec<String>);

impl Names {
    /// Whether `name` is new here; it is remembered either way.
    pub fn first_time(&mut self, name: &str) -> bool {
        let new = !self.0.iter().any(|n| n.eq_ignore_ascii_case(name));
        self.0.push(name.to_string());
        new
    }
}

/// What a node is, for messages.
pub fn shape(node: &Node) -> &'static str {
    match node.value {
        Value::Scalar { .. } => "text",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
    }
}

/// The YAML 1.1 boolean words GoCD takes, in any case.
pub fn boolean_word(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" => Some(true),
        "false" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Substitutes `#{name}` from `params`; `##` is a literal `#`, a `#` before anything else
/// stays. The error names the parameter (or the broken reference).
pub fn substitute(text: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    if !text.contains('#') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('#') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('#') {
            out.push('#');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "`#{{` without a closing `}}` in `{text}` (write `##` for a literal `#`)"
                ));
            };
            let name = &tail[..end];
            if name.is_empty() {
                return Err(format!("empty parameter reference `#{{}}` in `{text}`"));
            }
            match params.get(name) {
                Some(value) => out.push_str(value),
                None => return Err(format!("parameter `{name}` is not defined (in `{text}`)")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('#');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// GoCD's names: `[A-Za-z0-9_.-]`, 1 to 255 characters.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a name cannot be empty".to_string())
    } else if name.chars().count() > 255 {
        Some(format!("name `{name}` is longer than 255 characters"))
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Some(format!(
            "name `{name}` may hold only letters, digits, `_`, `.` and `-`"
        ))
    } else {
        None
    }
}

/// An issue at `path`; the document itself where the path is empty (a key `""` on top).
fn issue(path: &str, line: u32, message: String) -> ConfigIssue {
    let path = if path.is_empty() {
        "(document)".to_string()
    } else {
        path.to_string()
    };
    ConfigIssue {
        path,
        line: Some(line),
        message,
    }
}

impl Reader {
    pub fn error(&mut self, path: &str, line: u32, message: impl Into<String>) {
        self.errors.push(issue(path, line, message.into()));
    }

    pub fn warn(&mut self, path: &str, line: u32, message: impl Into<String>) {
        self.warnings.push(issue(path, line, message.into()));
    }

    /// The node as a map; an empty value is an empty map.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields::new(entries, path, node.line)),
            _ if node.is_null() => Some(Fields::new(&[], path, node.line)),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected {what} (a map), found {}", shape(node)),
                );
                None
            }
        }
    }

    /// The node's raw text, params not substituted.
    pub fn raw_text(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected text, found {}", shape(node)),
                );
                None
            }
        }
    }

    /// The node's text with the pipeline's params substituted.
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        let raw = self.raw_text(node, path)?;
        let Some(params) = &self.params else {
            return Some(raw);
        };
        match substitute(&raw, params) {
            Ok(text) => Some(text),
            Err(message) => {
                self.error(path, node.line, message);
                None
            }
        }
    }

    pub fn opt_text(&mut self, fields: &mut Fields, key: &str) -> Option<String> {
        let Some(node) = fields.get(key) else {
            if let Some(entry) = fields.get_entry(key) {
                self.warn_commented_param(entry, &fields.path_of(key));
            }
            return None;
        };
        self.text(node, &fields.path_of(key))
    }

    /// A required text field; its absence is an error on the map.
    pub fn required_text(&mut self, fields: &mut Fields, key: &str, what: &str) -> Option<String> {
        if fields.get(key).is_none() {
            let commented = fields
                .get_entry(key)
                .is_some_and(|e| self.commented_params.contains(&e.key_line));
            let hint = if commented { COMMENTED_PARAM } else { "" };
            self.error(
                &fields.path_of(key),
                fields.line_of(key),
                format!("`{key}` is required ({what}){hint}"),
            );
            return None;
        }
        self.opt_text(fields, key)
    }

    /// GoCD reads an unquoted `key: #{param}` as empty, as YAML does; ferrocd too, but says so.
    fn warn_commented_param(&mut self, entry: &Entry, path: &str) {
        if entry.value.is_null() && self.commented_params.contains(&entry.key_line) {
            self.warn(
                path,
                entry.key_line,
                format!("the value is empty{COMMENTED_PARAM}"),
            );
        }
    }

    pub fn boolean(&mut self, fields: &mut Fields, key: &str, default: bool) -> bool {
        let Some(node) = fields.get(key) else {
            return default;
        };
        let path = fields.path_of(key);
        let Some(text) = self.raw_text(node, &path) else {
            return default;
        };
        match boolean_word(&text) {
            Some(value) => value,
            None => {
                self.error(
                    &path,
                    node.line,
                    format!("expected a boolean (true/false, yes/no, on/off, y/n), found `{text}`"),
                );
                default
            }
        }
    }

    /// An integer field at least `min`, parsed from its text (params substituted).
    pub fn integer(&mut self, fields: &mut Fields, key: &str, min: i64) -> Option<i64> {
        let node = fields.get(key)?;
        let path = fields.path_of(key);
        let text = self.text(node, &path)?;
        match text.trim().parse::<i64>() {
            Ok(value) if value >= min => Some(value),
            Ok(value) => {
                self.error(
                    &path,
                    node.line,
                    format!("`{value}` is below the least allowed, {min}"),
                );
                None
            }
            Err(_) => {
                self.error(
                    &path,
                    node.line,
                    format!("expected an integer, found `{text}`"),
                );
                None
            }
        }
    }

    /// A list of text (params substituted); an empty value is an empty list.
    pub fn text_list(&mut self, fields: &mut Fields, key: &str) -> Vec<String> {
        let Some(node) = fields.get(key) else {
            return Vec::new();
        };
        let path = fields.path_of(key);
        let Value::List(items) = &node.value else {
            self.error(
                &path,
                node.line,
                format!("expected a list, found {}", shape(node)),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.text(item, &format!("{path}[{i}]")))
            .collect()
    }

    /// A map name → text (variables, options, tabs), params substituted in the values; empty
    /// values are empty text. Names equal but for case are duplicates when `unique_names`.
    pub fn text_map(
        &mut self,
        fields: &mut Fields,
        key: &str,
        unique_names: bool,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(node) = fields.get(key) else {
            return out;
        };
        let path = fields.path_of(key);
        let Some(map) = self.map(node, &path, "a map of names to values") else {
            return out;
        };
        for entry in map.entries() {
            let entry_path = key_path(&path, &entry.key);
            if unique_names
                && out
                    .keys()
                    .any(|k: &String| k.eq_ignore_ascii_case(&entry.key))
            {
                self.error(
                    &entry_path,
                    entry.key_line,
                    format!(
                        "duplicate name `{}` (names are compared ignoring case)",
                        entry.key
                    ),
                );
                continue;
            }
            let value = if entry.value.is_null() {
                self.warn_commented_param(entry, &entry_path);
                Some(String::new())
            } else {
                self.text(&entry.value, &entry_path)
            };
            if let Some(value) = value {
                out.insert(entry.key.clone(), value);
            }
        }
        out
    }

    /// Checks a name; reports the problem at `path`.
    pub fn check_name(&mut self, name: &str, path: &str, line: u32) -> bool {
        match name_problem(name) {
            Some(problem) => {
                self.error(path, line, problem);
                false
            }
            None => true,
        }
    }

    /// Whether `name` is a valid name not yet in `names` (a pipeline, stage, job, material or
    /// environment in `scope`); reports the problem at `path` if not.
    pub fn unique_name(
        &mut self,
        names: &mut Names,
        name: &str,
        path: &str,
        line: u32,
        what: &str,
        scope: &str,
    ) -> bool {
        if !self.check_name(name, path, line) {
            return false;
        }
        if !names.first_time(name) {
            self.error(
                path,
                line,
                format!(
                    "{what} `{name}` appears twice in {scope} (names are compared ignoring case)"
                ),
            );
            return false;
        }
        true
    }

    /// `secure_variables`, `encrypted_password`, `secure_options`: ciphertext ferrocd cannot read.
    pub fn refuse_ciphertext(&mut self, fields: &mut Fields, key: &str) {
        let Some(entry) = fields.get_entry(key) else {
            return;
        };
        let path = fields.path_of(key);
        let names: Vec<&str> = match &entry.value.value {
            Value::Map(entries) => entries.iter().map(|e| e.key.as_str()).collect(),
            _ => Vec::new(),
        };
        let what = if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        };
        self.error(
            &path,
            entry.key_line,
            format!(
                "`{key}`{what} holds ciphertext made with a GoCD server's cipher key, which ferrocd does not have; \
                 give the value in plain text or through ferrocd's secrets"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_substitute_and_double_hash_is_literal() {
        let params = BTreeMap::from([
            ("a".to_string(), "x".to_string()),
            ("b-c".to_string(), String::new()),
        ]);
        assert_eq!(substitute("#{a}/#{b-c}##{a}#", &params).unwrap(), "x/#{a}#");
        assert_eq!(substitute("no hash", &params).unwrap(), "no hash");
        assert!(
            substitute("#{nope}", &params)
                .unwrap_err()
                .contains("`nope`")
        );
        assert!(substitute("#{a", &params).unwrap_err().contains("closing"));
        assert!(substitute("#{}", &params).unwrap_err().contains("empty"));
    }

    #[test]
    fn boolean_words_in_any_case() {
        for word in ["true", "Yes", "Y", "ON", "tRuE"] {
            assert_eq!(boolean_word(word), Some(true), "{word}");
        }
        for word in ["false", "No", "n", "OFF"] {
            assert_eq!(boolean_word(word), Some(false), "{word}");
        }
        for word in ["1", "0", "", "yess", "~"] {
            assert_eq!(boolean_word(word), None, "{word}");
        }
    }

    #[test]
    fn names_follow_gocd() {
        assert!(name_problem("a-b_c.1").is_none());
        assert!(name_problem("a b").unwrap().contains("`a b`"));
        assert!(name_problem("").is_some());
        assert!(name_problem(&"x".repeat(255)).is_none());
        assert!(name_problem(&"x".repeat(256)).is_some());
    }

    #[test]
    fn suggestions_find_near_keys() {
        assert_eq!(
            suggestion("args", &["command", "arguments"]),
            Some("arguments")
        );
        assert_eq!(
            suggestion("comand", &["command", "arguments"]),
            Some("command")
        );
        assert_eq!(suggestion("zzz", &["command", "arguments"]), None);
    }
}

//! YAML text → a small node tree, judged the way GoCD's plugin reads YAML: every scalar is
//! text (with whether it was quoted), a map keeps its keys in order so a duplicate key is an
//! error (`a` and `"a"` are one key), merge keys and aliases are resolved here (a key a merged
//! map also sets is a duplicate, as in GoCD), and only the first document counts.
//!
//! Aliases are spliced as copies, so a few lines can ask for billions of nodes: the copies are
//! counted and refused beyond [`MAX_NODES`]. Custom tags are refused: GoCD knows none.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::domain::pipeline_config::ConfigIssue;

/// The most nodes a document may hold once its aliases are spliced in.
pub const MAX_NODES: usize = 100_000;
/// The deepest nesting read; deeper is refused before it can exhaust the stack.
const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// 1-based, where the node (or, for a spliced alias, its anchor's node) starts.
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { text: String, quoted: bool },
    List(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_line: u32,
    pub value: Node,
}

impl Node {
    /// An empty plain scalar (`key:` with nothing after it, or `key: #{p}`, a comment): GoCD
    /// reads these as absent.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if text.is_empty())
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::List(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|e| 1 + e.value.size()).sum::<usize>(),
        }
    }
}

/// Reads the first document of `text`. `Ok(None)`: there is no document (or it is empty).
pub fn load(text: &str) -> Result<Option<Node>, Vec<ConfigIssue>> {
    let mut loader = Loader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        issues: Vec::new(),
    };
    match loader.document() {
        Ok(root) if loader.issues.is_empty() => Ok(root),
        Ok(_) => Err(loader.issues),
        Err(fatal) => {
            loader.issues.push(fatal);
            Err(loader.issues)
        }
    }
}

struct Loader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Anchor id → the node it names and its size.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes built so far, spliced copies included.
    nodes: usize,
    /// Problems that leave the tree readable (duplicate keys); reading goes on.
    issues: Vec<ConfigIssue>,
}

fn issue(path: &str, line: u32, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: if path.is_empty() {
            "(document)".to_string()
        } else {
            path.to_string()
        },
        line: Some(line),
        message: message.into(),
    }
}

fn line_of(span: &Span) -> u32 {
    u32::try_from(span.start.line()).unwrap_or(u32::MAX)
}

/// Joins a map key onto a path: `a.b`.
pub fn key_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Loader<'a> {
    fn next(&mut self, path: &str) -> Result<(Event<'a>, Span), ConfigIssue> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(error)) => {
                let line = u32::try_from(error.marker().line()).unwrap_or(u32::MAX);
                Err(issue(
                    path,
                    line,
                    format!("not valid YAML: {}", error.info()),
                ))
            }
            None => Err(issue(path, 0, "not valid YAML: the text ends too early")),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, ConfigIssue> {
        loop {
            let (event, _) = self.next("")?;
            match event {
                Event::StreamStart | Event::Nothing => {}
                // GoCD reads the first document only; the rest of the stream is not looked at.
                Event::DocumentStart(_) => {
                    let (event, span) = self.next("")?;
                    if matches!(event, Event::DocumentEnd) {
                        return Ok(None);
                    }
                    let root = self.node(event, span, "", 0)?;
                    return Ok((!root.is_null()).then_some(root));
                }
                _ => return Ok(None),
            }
        }
    }

    fn count(&mut self, added: usize, path: &str, line: u32) -> Result<(), ConfigIssue> {
        self.nodes = self.nodes.saturating_add(added);
        if self.nodes > MAX_NODES {
            return Err(issue(
                path,
                line,
                format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases of aliases?); refused"
                ),
            ));
        }
        Ok(())
    }

    fn check_tag(tag: Option<&Tag>, path: &str, line: u32) -> Result<(), ConfigIssue> {
        match tag {
            Some(tag)
                if !(tag.is_yaml_core_schema()
                    && ["str", "int", "bool", "float", "map", "seq", "null"]
                        .contains(&tag.suffix.as_str())) =>
            {
                Err(issue(
                    path,
                    line,
                    format!("custom tag `{}{}` is not supported", tag.handle, tag.suffix),
                ))
            }
            _ => Ok(()),
        }
    }

    fn node(
        &mut self,
        event: Event<'a>,
        span: Span,
        path: &str,
        depth: usize,
    ) -> Result<Node, ConfigIssue> {
        let line = line_of(&span);
        if depth > MAX_DEPTH {
            return Err(issue(
                path,
                line,
                format!("nested deeper than {MAX_DEPTH} levels; refused"),
            ));
        }
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                Self::check_tag(tag.as_deref(), path, line)?;
                self.count(1, path, line)?;
                let quoted = !matches!(style, ScalarStyle::Plain);
                (
                    Node {
                        value: Value::Scalar {
                            text: text.into_owned(),
                            quoted,
                        },
                        line,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err(issue(path, line, "alias to an unknown anchor"));
                };
                let (node, size) = (node.clone(), *size);
                self.count(size, path, line)?;
                return Ok(node);
            }
            Event::SequenceStart(anchor, tag) => {
                Self::check_tag(tag.as_deref(), path, line)?;
                self.count(1, path, line)?;
                let mut items = Vec::new();
                loop {
                    let item_path = format!("{path}[{}]", items.len());
                    let (event, span) = self.next(&item_path)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span, &item_path, depth + 1)?);
                }
                (
                    Node {
                        value: Value::List(items),
                        line,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, tag) => {
                Self::check_tag(tag.as_deref(), path, line)?;
                self.count(1, path, line)?;
                (self.map(path, line, depth)?, anchor)
            }
            other => {
                return Err(issue(
                    path,
                    line,
                    format!("unexpected YAML event {other:?}"),
                ));
            }
        };
        if anchor > 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }

    fn map(&mut self, path: &str, line: u32, depth: usize) -> Result<Node, ConfigIssue> {
        let mut own: Vec<Entry> = Vec::new();
        let mut merged: Vec<Entry> = Vec::new();
        loop {
            let (event, span) = self.next(path)?;
            let key_line = line_of(&span);
            let (key, plain) = match event {
                Event::MappingEnd => break,
                Event::Scalar(text, style, _, tag) => {
                    Self::check_tag(tag.as_deref(), path, key_line)?;
                    (text.into_owned(), matches!(style, ScalarStyle::Plain))
                }
                Event::Alias(id) => match self.anchors.get(&id).map(|(n, _)| &n.value) {
                    Some(Value::Scalar { text, .. }) => (text.clone(), false),
                    _ => return Err(issue(path, key_line, "a map key must be text")),
                },
                _ => {
                    return Err(issue(
                        path,
                        key_line,
                        "a map key must be text, not a list or a map",
                    ));
                }
            };
            let value_path = key_path(path, &key);
            let (event, span) = self.next(&value_path)?;
            let value = self.node(event, span, &value_path, depth + 1)?;
            if plain && key == "<<" {
                self.merge(value, &value_path, key_line, &mut merged);
            } else {
                own.push(Entry {
                    key,
                    key_line,
                    value,
                });
            }
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(own.len() + merged.len());
        for entry in own.into_iter().chain(merged) {
            if let Some(first) = entries.iter().find(|e| e.key == entry.key) {
                self.issues.push(issue(
                    &key_path(path, &entry.key),
                    entry.key_line,
                    format!(
                        "duplicate key `{}` (also on line {}; a key a merged `<<:` map sets counts too)",
                        entry.key, first.key_line
                    ),
                ));
            } else {
                entries.push(entry);
            }
        }
        Ok(Node {
            value: Value::Map(entries),
            line,
        })
    }

    /// `<<: map` or `<<: [maps]`: their keys join the map's own.
    fn merge(&mut self, value: Node, path: &str, line: u32, into: &mut Vec<Entry>) {
        match value.value {
            Value::Map(entries) => into.extend(entries),
            Value::List(items) => {
                for item in items {
                    match item.value {
                        Value::Map(entries) => into.extend(entries),
                        _ => self.issues.push(issue(
                            path,
                            item.line,
                            "a merge key `<<:` takes a map or a list of maps",
                        )),
                    }
                }
            }
            Value::Scalar { .. } => self.issues.push(issue(
                path,
                line,
                "a merge key `<<:` takes a map or a list of maps",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> &str {
        match &node.value {
            Value::Scalar { text, .. } => text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn entries(node: &Node) -> &[Entry] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalars_keep_their_text_quoting_and_line() {
        let root = load("a: 1.10\nb: '0755'\nc: yes\nd: ~\ne:\n")
            .unwrap()
            .unwrap();
        let map = entries(&root);
        let texts: Vec<&str> = map.iter().map(|e| scalar(&e.value)).collect();
        assert_eq!(texts, ["1.10", "0755", "yes", "~", ""]);
        assert!(matches!(
            map[1].value.value,
            Value::Scalar { quoted: true, .. }
        ));
        assert!(matches!(
            map[0].value.value,
            Value::Scalar { quoted: false, .. }
        ));
        assert_eq!(map[2].value.line, 3);
        assert!(map[4].value.is_null());
        assert!(!map[3].value.is_null());
    }

    #[test]
    fn a_quoted_and_a_plain_key_are_the_same_key() {
        let issues = load("top:\n  a: 1\n  \"a\": 2\n").unwrap_err();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "top.a");
        assert_eq!(issues[0].line, Some(3));
        assert!(
            issues[0].message.contains("duplicate key `a`"),
            "{}",
            issues[0].message
        );
        assert!(
            issues[0].message.contains("line 2"),
            "{}",
            issues[0].message
        );
    }

    #[test]
    fn merge_keys_join_and_a_key_they_also_set_is_a_duplicate() {
        let root = load("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  z: 3\n")
            .unwrap()
            .unwrap();
        let m = &entries(&root)[1].value;
        let keys: Vec<&str> = entries(m).iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["z", "x", "y"]);
        let root = load("l: [&a {x: 1}, &b {y: 2}]\nm:\n  <<: [*a, *b]\n")
            .unwrap()
            .unwrap();
        assert_eq!(entries(&entries(&root)[1].value).len(), 2);
        let issues = load("base: &b {x: 1}\nm:\n  <<: *b\n  x: 3\n").unwrap_err();
        assert_eq!(issues[0].path, "m.x");
        assert!(issues[0].message.contains("duplicate"));
        let issues = load("m:\n  <<: 3\n").unwrap_err();
        assert_eq!(issues[0].path, "m.<<");
    }

    #[test]
    fn aliases_are_spliced_with_their_anchors_lines() {
        let root = load("a: &x\n  - 1\n  - 2\nb: *x\n").unwrap().unwrap();
        let map = entries(&root);
        assert_eq!(map[0].value, map[1].value);
        // The spliced copy is where the anchor is.
        assert_eq!(map[1].value.line, 1);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let started = std::time::Instant::now();
        let issues = load(&text).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            issues[0].message.contains("more than 100000 nodes"),
            "{}",
            issues[0].message
        );
        assert!(issues[0].path.starts_with('a'), "{}", issues[0].path);
    }

    #[test]
    fn only_the_first_document_is_read() {
        let root = load("---\na: 1\n---\nb: [unclosed\n").unwrap().unwrap();
        assert_eq!(entries(&root)[0].key, "a");
        assert_eq!(load("").unwrap(), None);
        assert_eq!(load("# only a comment\n").unwrap(), None);
        assert_eq!(load("---\n").unwrap(), None);
    }

    #[test]
    fn custom_tags_are_refused_and_core_ones_read() {
        let issues = load("a: !ruby/object x\n").unwrap_err();
        assert!(
            issues[0].message.contains("custom tag"),
            "{}",
            issues[0].message
        );
        assert_eq!(issues[0].path, "a");
        let root = load("a: !!str 1\n").unwrap().unwrap();
        assert_eq!(scalar(&entries(&root)[0].value), "1");
    }

    #[test]
    fn syntax_errors_give_the_parsers_line() {
        let issues = load("a: 1\nb: [x, y\nc: 2\n").unwrap_err();
        assert!(
            issues[0].message.starts_with("not valid YAML"),
            "{}",
            issues[0].message
        );
        assert!(issues[0].line.unwrap() >= 2, "{:?}", issues[0]);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let issues = load(&text).unwrap_err();
        // saphyr's own limit or ours, whichever comes first: refused, not a blown stack.
        let message = &issues[0].message;
        assert!(
            message.contains("nested deeper") || message.contains("recursion limit"),
            "{message}"
        );
    }
}

//! A YAML document as a tree of nodes that remember where they came from.
//!
//! serde-saphyr gives locations through [`serde_saphyr::Spanned`]; deserializing every
//! node as `Spanned<Raw>` yields a generic tree with a line and column on every node,
//! which the converters in `parse.rs` walk to build the model and report errors that
//! point at the offending node.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::error::PlanError;
use super::model::Location;

/// A line and column (1-based; 0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// This position in `file`.
    pub fn at(self, file: &str) -> Location {
        Location {
            file: file.to_owned(),
            line: self.line,
            column: self.column,
        }
    }

    /// `self`, or `fallback` when `self` is unknown.
    pub fn or(self, fallback: Pos) -> Pos {
        if self.line == 0 { fallback } else { self }
    }
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
    /// The source text of a number, so `tag: 1.10` reads as `1.10` where text is wanted.
    pub raw: Option<String>,
    /// Byte range in the source, while loading.
    span: Option<(usize, usize)>,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order (serde-saphyr rejects duplicate keys before we see them).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the node's kind for messages ("a mapping", "a string", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// A node with no source text.
    pub fn new(pos: Pos, value: Value) -> Node {
        Node {
            pos,
            value,
            raw: None,
            span: None,
        }
    }

    /// Record the source text of numbers (from their spans in `text`) and give nodes
    /// without a known position their parent's, recursively.
    fn finish(&mut self, text: &str, parent: Pos) {
        self.pos = self.pos.or(parent);
        let pos = self.pos;
        match &mut self.value {
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => {
                self.raw = self
                    .span
                    .and_then(|(start, len)| text.get(start..start.checked_add(len)?))
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty());
            }
            Value::Seq(items) => items.iter_mut().for_each(|n| n.finish(text, pos)),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.finish(text, pos);
                v.finish(text, pos);
            }),
            _ => {}
        }
    }

    /// Convert to JSON. Floats that JSON cannot hold (NaN, infinities) become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Build a node tree from JSON, every node at `pos` (used for variable values).
    pub fn from_json(value: &serde_json::Value, pos: Pos) -> Node {
        use serde_json::Value as J;
        let value = match value {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Seq(items.iter().map(|v| Node::from_json(v, pos)).collect()),
            J::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| {
                        (
                            Node::new(pos, Value::Str(k.clone())),
                            Node::from_json(v, pos),
                        )
                    })
                    .collect(),
            ),
        };
        Node::new(pos, value)
    }

    /// The text of a scalar (strings as is, numbers and booleans printed); `None` for
    /// null, lists and mappings.
    pub fn scalar_text(&self) -> Option<String> {
        if let (Some(raw), Value::Int(_) | Value::UInt(_) | Value::Float(_)) =
            (&self.raw, &self.value)
        {
            return Some(raw.clone());
        }
        match &self.value {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// What a node deserializes to before its span is attached.
struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

fn spanned(s: Spanned<Raw>) -> Node {
    let line = usize::try_from(s.referenced.line()).unwrap_or(0);
    let column = usize::try_from(s.referenced.column()).unwrap_or(0);
    let span = s.referenced.span();
    let span = match (span.byte_offset(), span.byte_len()) {
        (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
        _ => None,
    };
    Node {
        pos: Pos { line, column },
        value: s.value.0,
        raw: None,
        span,
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(Value::UInt(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        // Out of JSON's integer range: keep the digits rather than lose precision.
        Ok(Raw(Value::Str(v.to_string())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(Value::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw(Value::Str(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(spanned(item));
        }
        Ok(Raw(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((spanned(key), spanned(value)));
        }
        Ok(Raw(Value::Map(entries)))
    }
}

/// How deeply lists and mappings may nest.
pub(crate) const MAX_DEPTH: usize = 32;

/// Parse `text` as one YAML document.
pub(crate) fn load(text: &str, file: &str) -> Result<Node, PlanError> {
    if text.trim().is_empty() {
        return Err(PlanError::new(
            Location {
                file: file.to_owned(),
                line: 1,
                column: 1,
            },
            "the file is empty",
        )
        .with_hint("write a YAML mapping at the top level"));
    }
    // YAML 1.2 booleans only, so `N:` or `on:` stay strings; numbers with a leading
    // zero (`007`) stay strings rather than turning into something else.
    //
    // Every level of nesting costs stack while deserializing (tens of KiB per level in
    // debug builds), and files are parsed on async worker threads with 2 MiB stacks:
    // the depth limit keeps the worst case well inside that. Real pipelines nest far
    // less deeply.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: MAX_DEPTH },
        with_snippet: false,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(root) => {
            let mut node = spanned(root);
            node.finish(text, Pos { line: 1, column: 1 });
            Ok(node)
        }
        Err(err) => Err(yaml_error(&err, file)),
    }
}

/// A YAML syntax or budget error as a [`PlanError`] (at 1:1 when the parser gives no
/// position).
fn yaml_error(err: &serde_saphyr::Error, file: &str) -> PlanError {
    use serde_saphyr::MessageFormatter;
    let (line, column) = err
        .location()
        .map(|l| {
            (
                usize::try_from(l.line()).unwrap_or(0),
                usize::try_from(l.column()).unwrap_or(0),
            )
        })
        .filter(|(line, _)| *line > 0)
        .unwrap_or((1, 1));
    let inner = err.without_snippet();
    let (raw, hint) = match inner {
        serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Depth { .. },
            ..
        } => (
            format!("lists and mappings nest more than {MAX_DEPTH} levels deep").into(),
            "flatten the structure (e.g. move deep values into a variable or a file)",
        ),
        serde_saphyr::Error::Budget { .. } => (
            serde_saphyr::UserMessageFormatter.format_message(inner),
            "the file is too large or too complex (too many nodes, aliases or documents)",
        ),
        _ => {
            let msg = serde_saphyr::UserMessageFormatter.format_message(inner);
            // The parser's own nesting limit for flow collections (`[[[[...`).
            let hint = if msg.contains("recursion limit") {
                "flatten the structure (e.g. move deep values into a variable or a file)"
            } else {
                "fix the YAML syntax at this position"
            };
            (msg, hint)
        }
    };
    // The message may quote input; keep it on one line and free of control characters.
    let message: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    PlanError::new(
        Location {
            file: file.to_owned(),
            line,
            column: column.max(1),
        },
        format!("invalid YAML: {message}"),
    )
    .with_hint(hint)
}

//! `((var))` placeholders and the values that fill them.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::error::PlanError;
use super::node::{Node, Pos, Value as NodeValue};

/// Values for `((name))` placeholders, by name.
///
/// Built from `KEY=VALUE` pairs (the binary's `--var`) ([`Vars::parse_assignment`]) or from typed values
/// ([`Vars::insert`]). A placeholder that is a whole YAML value (`timeout: ((t))`) takes
/// the variable's value with its type (a mapping stays a mapping); one inside a longer
/// string (`uri: https://((host))/x`) is replaced by the value as text (strings as they
/// are, anything else as JSON). `((name.field))` reads a field of a mapping value.
///
/// Values are often secrets, so `Debug` shows only the names.
#[derive(Clone, Default, PartialEq)]
pub struct Vars {
    values: BTreeMap<String, Value>,
    /// A variable without a value reads as its placeholder's text instead of failing.
    lenient: bool,
    /// The pipeline's `var_sources`, by name, for `((source:name))`.
    sources: BTreeMap<String, VarSource>,
}

/// A declared var source.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VarSource {
    /// Its type (`dummy`, `vault`, ...).
    pub type_: String,
    /// A `dummy` source's `config.vars`.
    pub vars: Value,
    /// Where it was declared.
    pub location: crate::plan::Location,
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Vars {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// These values, with the pipeline's var sources for `((source:name))`.
    pub(crate) fn with_sources(mut self, sources: BTreeMap<String, VarSource>) -> Self {
        self.sources = sources;
        self
    }

    /// These values, with every variable that has none read as its placeholder's own
    /// text (`((name))`) instead of an error: for checking a pipeline's shape without
    /// its values, as `fly validate-pipeline` does. [`missing_vars`] says which.
    pub fn lenient(mut self) -> Self {
        self.lenient = true;
        self
    }

    /// Split `KEY=VALUE` (as the binary's `--var` takes it) into its name and a string value, like
    /// Concourse's `--var`. The value may contain `=`; the name must not be empty.
    pub fn parse_assignment(assignment: &str) -> Result<(String, Value), String> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("`{assignment}` is not an assignment: write NAME=VALUE"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "`{assignment}` has no variable name: write NAME=VALUE"
            ));
        }
        Ok((name.to_owned(), Value::String(value.to_owned())))
    }

    /// Like [`Vars::parse_assignment`], but the value is read as YAML (Concourse's
    /// `--yaml-var`), so `n=3` gives a number and `s={a: 1}` a mapping.
    pub fn parse_yaml_assignment(assignment: &str) -> Result<(String, Value), String> {
        let (name, text) = Self::parse_assignment(assignment)?;
        let text = text.as_str().unwrap_or_default();
        if text.trim().is_empty() {
            return Ok((name, Value::String(String::new())));
        }
        let node = super::node::load(text, &name)
            .map_err(|e| format!("the value of `{name}` is not valid YAML: {}", e.message))?;
        Ok((name, node.to_json()))
    }

    /// Vars from `KEY=VALUE` assignments (string values); the last one of a name wins.
    pub fn from_assignments<I, S>(assignments: I) -> Result<Vars, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut vars = Vars::new();
        for a in assignments {
            let (name, value) = Self::parse_assignment(a.as_ref())?;
            vars.insert(name, value);
        }
        Ok(vars)
    }

    /// Set `name` to `value`, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: Value) -> &mut Self {
        self.values.insert(name.into(), value);
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// These vars with `overrides` on top: what a task file loaded at run time is
    /// interpolated with (the pipeline's vars overlaid with the task step's `vars`).
    pub fn overlay(&self, overrides: &BTreeMap<String, Value>) -> Vars {
        let mut out = self.clone();
        for (k, v) in overrides {
            out.values.insert(k.clone(), v.clone());
        }
        out
    }
}

impl FromIterator<(String, Value)> for Vars {
    fn from_iter<T: IntoIterator<Item = (String, Value)>>(iter: T) -> Self {
        Vars {
            values: iter.into_iter().collect(),
            lenient: false,
            sources: BTreeMap::new(),
        }
    }
}

impl Extend<(String, Value)> for Vars {
    fn extend<T: IntoIterator<Item = (String, Value)>>(&mut self, iter: T) {
        self.values.extend(iter);
    }
}

/// A placeholder found in a string: byte range and the text between the parentheses.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    inner: &'a str,
}

/// Every `((...))` in `s`, left to right.
fn placeholders(s: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = s[from..].find("((").map(|i| i + from) {
        let Some(close) = s[open + 2..].find("))").map(|i| i + open + 2) else {
            break;
        };
        let inner = &s[open + 2..close];
        // As in Concourse, only names made of word characters and `-./:"` are
        // placeholders; anything else (shell arithmetic `$((n + 1))`) is plain text.
        let name = inner.trim();
        if !name.is_empty()
            && !name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '"'))
        {
            from = open + 2;
            continue;
        }
        found.push(Placeholder {
            start: open,
            end: close + 2,
            inner,
        });
        from = close + 2;
    }
    found
}

/// Every variable `text` names that `vars` has no value for, each once, where it is
/// first used, in file order.
///
/// Errors: the text is not YAML.
pub fn missing_vars(
    text: &str,
    file: &str,
    vars: &Vars,
) -> Result<Vec<(String, crate::plan::Location)>, PlanError> {
    fn walk(node: &Node, vars: &Vars, file: &str, out: &mut Vec<(String, crate::plan::Location)>) {
        match &node.value {
            NodeValue::Str(s) => {
                for p in placeholders(s).into_iter().filter(|p| !is_local(p.inner)) {
                    let text = p.inner.trim();
                    let (name, has) = match source_of(text) {
                        Some((src, rest)) => {
                            let var = rest.split('.').next().unwrap_or_default().trim();
                            let has = vars
                                .sources
                                .get(src)
                                .is_some_and(|s| s.type_ == "dummy" && s.vars.get(var).is_some());
                            (format!("{src}:{var}"), has)
                        }
                        None => {
                            let name = text.split('.').next().unwrap_or_default().trim();
                            (name.to_owned(), vars.get(name).is_some())
                        }
                    };
                    if !name.is_empty() && !has && !out.iter().any(|(n, _)| *n == name) {
                        out.push((name, node.pos.at(file)));
                    }
                }
            }
            NodeValue::Seq(items) => items.iter().for_each(|n| walk(n, vars, file, out)),
            NodeValue::Map(entries) => entries.iter().for_each(|(k, v)| {
                walk(k, vars, file, out);
                walk(v, vars, file, out);
            }),
            _ => {}
        }
    }
    let root = super::node::load(text, file)?;
    let vars = super::with_var_sources(&root, &vars.clone().lenient(), file)?;
    let mut out = Vec::new();
    walk(&root, &vars, file, &mut out);
    Ok(out)
}

/// Local vars set by `load_var` steps, by name; filled in when a step starts.
pub type LocalVars = BTreeMap<String, Value>;

/// The value of a local placeholder's text (`.:name` or `.:name.field`).
fn local_value(inner: &str, locals: &LocalVars) -> std::result::Result<Value, String> {
    let text = inner.trim().trim_start_matches(".:");
    let mut parts = text.split('.').map(str::trim);
    let name = parts.next().unwrap_or_default();
    let Some(value) = locals.get(name) else {
        return Err(format!(
            "local var `{name}` in `(({}))` is not set: no earlier `load_var: {name}` step ran in this build",
            inner.trim()
        ));
    };
    follow(value, name, parts)
        .cloned()
        .map_err(|(path, field)| {
            format!(
                "local var `{path}` has no field `{field}` (in `(({}))`)",
                inner.trim()
            )
        })
}

/// `value`'s field at `fields`, one mapping after another; or, where one is missing,
/// the path read so far (from `path`) and the field it lacks.
fn follow<'v, 'f>(
    mut value: &'v Value,
    path: &str,
    fields: impl Iterator<Item = &'f str>,
) -> std::result::Result<&'v Value, (String, &'f str)> {
    let mut path = path.to_owned();
    for field in fields {
        value = value
            .as_object()
            .and_then(|m| m.get(field))
            .ok_or_else(|| (path.clone(), field))?;
        path.push('.');
        path.push_str(field);
    }
    Ok(value)
}

/// `s` with its local placeholders replaced by their values as text (strings as they
/// are, anything else as JSON); other text, `((var))` left by a lenient check
/// included, is kept.
pub fn fill_locals(s: &str, locals: &LocalVars) -> std::result::Result<String, String> {
    let found: Vec<Placeholder<'_>> = placeholders(s)
        .into_iter()
        .filter(|p| is_local(p.inner))
        .collect();
    if found.is_empty() {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in &found {
        out.push_str(&s[last..p.start]);
        match local_value(p.inner, locals)? {
            Value::String(text) => out.push_str(&text),
            other => out.push_str(&other.to_string()),
        }
        last = p.end;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

/// [`fill_locals`] through a JSON value; a string that is one whole placeholder takes
/// the value with its type (a mapping stays a mapping), as `((var))` does.
pub fn fill_locals_json(v: &Value, locals: &LocalVars) -> std::result::Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let found = placeholders(s);
            match found.as_slice() {
                [p] if p.start == 0 && p.end == s.len() && is_local(p.inner) => {
                    local_value(p.inner, locals)?
                }
                _ => Value::String(fill_locals(s, locals)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| fill_locals_json(i, locals))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), fill_locals_json(v, locals)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Fill every placeholder in `node` (keys included) from `vars`.
pub(crate) fn interpolate(node: &Node, vars: &Vars, file: &str) -> Result<Node, PlanError> {
    let value = match &node.value {
        NodeValue::Str(s) => return interpolate_str(s, node.pos, vars, file),
        NodeValue::Seq(items) => NodeValue::Seq(
            items
                .iter()
                .map(|n| interpolate(n, vars, file))
                .collect::<Result<_, _>>()?,
        ),
        NodeValue::Map(entries) => NodeValue::Map(
            entries
                .iter()
                .map(|(k, v)| {
                    let mut key = interpolate(k, vars, file)?;
                    // A key must stay a scalar: a whole-key placeholder becomes its text.
                    if matches!(key.value, NodeValue::Seq(_) | NodeValue::Map(_)) {
                        key.value = NodeValue::Str(key.to_json().to_string());
                    }
                    Ok((key, interpolate(v, vars, file)?))
                })
                .collect::<Result<_, PlanError>>()?,
        ),
        // Numbers keep their source text.
        _ => return Ok(node.clone()),
    };
    Ok(Node::new(node.pos, value))
}

/// Whether a placeholder's text names a local var (`((.:name))`), which a `load_var`
/// step sets while the build runs: left as it is until the step that uses it starts.
fn is_local(inner: &str) -> bool {
    inner.trim().starts_with(".:")
}

fn interpolate_str(s: &str, pos: Pos, vars: &Vars, file: &str) -> Result<Node, PlanError> {
    let found: Vec<Placeholder<'_>> = placeholders(s)
        .into_iter()
        .filter(|p| !is_local(p.inner))
        .collect();
    if found.is_empty() {
        return Ok(Node::new(pos, NodeValue::Str(s.to_owned())));
    }
    if found.len() == 1 && found[0].start == 0 && found[0].end == s.len() {
        let value = lookup(found[0].inner, pos, vars, file)?;
        return Ok(Node::from_json(&value, pos));
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in &found {
        out.push_str(&s[last..p.start]);
        match lookup(p.inner, pos, vars, file)? {
            Value::String(text) => out.push_str(&text),
            other => out.push_str(&other.to_string()),
        }
        last = p.end;
    }
    out.push_str(&s[last..]);
    Ok(Node::new(pos, NodeValue::Str(out)))
}

/// The value of the placeholder text `inner` (`name` or `name.field.field`).
/// A `((source:path))` placeholder's source and the rest, when it names one.
fn source_of(text: &str) -> Option<(&str, &str)> {
    let (src, rest) = text.split_once(':')?;
    let src = src.trim();
    (!src.is_empty() && src != "." && !src.contains('.')).then_some((src, rest.trim()))
}

/// The value `((source:name.field))` reads from the pipeline's var sources.
fn lookup_source(
    inner: &str,
    src: &str,
    rest: &str,
    pos: Pos,
    vars: &Vars,
    file: &str,
) -> Result<Value, PlanError> {
    let text = inner.trim();
    let Some(source) = vars.sources.get(src) else {
        if vars.lenient {
            return Ok(Value::String(format!("(({text}))")));
        }
        return Err(PlanError::new(
            pos.at(file),
            format!("`(({text}))` reads the var source `{src}`, which is not declared"),
        )
        .with_hint(format!(
            "declare it under `var_sources` (`- name: {src}`), or fix the name"
        )));
    };
    if source.type_ != "dummy" {
        if vars.lenient {
            return Ok(Value::String(format!("(({text}))")));
        }
        return Err(PlanError::new(
            pos.at(file),
            format!(
                "`(({text}))` reads the var source `{src}` of type `{}` (declared at {}), which jetbridge cannot read: only `dummy` var sources are supported",
                source.type_, source.location
            ),
        )
        .with_hint("give the value as a build var instead, or in a `dummy` var source"));
    }
    let mut parts = rest.split('.').map(str::trim);
    let name = parts.next().unwrap_or_default();
    let Some(value) = source.vars.get(name) else {
        return Err(PlanError::new(
            pos.at(file),
            format!("the var source `{src}` has no var `{name}` (in `(({text}))`)"),
        )
        .with_hint(format!("add `{name}` to its `config.vars`")));
    };
    follow(value, &format!("{src}:{name}"), parts)
        .cloned()
        .map_err(|(path, field)| {
            PlanError::new(
                pos.at(file),
                format!("`{path}` has no field `{field}` (in `(({text}))`)"),
            )
        })
}

fn lookup(inner: &str, pos: Pos, vars: &Vars, file: &str) -> Result<Value, PlanError> {
    let text = inner.trim();
    if let Some((src, rest)) = source_of(text) {
        return lookup_source(inner, src, rest, pos, vars, file);
    }
    let mut parts = text.split('.').map(str::trim);
    let name = parts.next().unwrap_or_default();
    if name.is_empty() {
        return Err(PlanError::new(
            pos.at(file),
            format!("placeholder `(({inner}))` names no variable"),
        )
        .with_hint("write `((name))` or `((name.field))`"));
    }
    let Some(value) = vars.get(name) else {
        if vars.lenient {
            return Ok(Value::String(format!("(({text}))")));
        }
        return Err(PlanError::new(
            pos.at(file),
            format!("variable `{name}` in `(({inner}))` has no value"),
        )
        .with_hint(format!(
            "give `{name}` a value when the build starts (or set it in the task step's `vars` for a task file)"
        ))
        .with_unfilled(name));
    };
    follow(value, name, parts)
        .cloned()
        .map_err(|(path, field)| {
            PlanError::new(
                pos.at(file),
                format!("variable `{path}` has no field `{field}` (in `(({inner}))`)"),
            )
            .with_hint(format!(
                "give `{name}` a mapping value with a `{field}` field, or fix the placeholder"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn local_vars_are_left_at_parse_time_and_filled_when_a_step_starts() {
        let root = super::super::node::load("a: ((.:v))\nb: \"x-((.:m.tag))-((n))\"\n", "f.yml")
            .expect("yaml");
        let filled = interpolate(&root, &vars(), "f.yml").expect("globals only");
        assert_eq!(
            filled.to_json(),
            json!({"a": "((.:v))", "b": "x-((.:m.tag))-3"})
        );
        assert!(
            missing_vars("a: ((.:v))\n", "f.yml", &Vars::new())
                .expect("yaml")
                .is_empty()
        );
        let mut locals = LocalVars::new();
        locals.insert("v".into(), json!({"k": [1, 2]}));
        locals.insert("m".into(), json!({"tag": "v1"}));
        assert_eq!(
            fill_locals("x-((.:m.tag))-((n))", &locals).unwrap(),
            "x-v1-((n))"
        );
        assert_eq!(fill_locals("((.:v))", &locals).unwrap(), "{\"k\":[1,2]}");
        assert_eq!(
            fill_locals_json(&json!({"a": "((.:v))", "b": ["((.:m.tag))!"]}), &locals).unwrap(),
            json!({"a": {"k": [1, 2]}, "b": ["v1!"]})
        );
        let e = fill_locals("((.:nope))", &locals).unwrap_err();
        assert!(e.contains("no earlier `load_var: nope` step"), "{e}");
        let e = fill_locals("((.:m.other))", &locals).unwrap_err();
        assert!(e.contains("has no field `other`"), "{e}");
    }

    #[test]
    fn missing_vars_are_named_once_where_first_used_and_lenient_reads_them_as_text() {
        let text = "a: ((x))\nb: [((y.field)), ((x))]\nc: \"$((1 + 2)) ((n))\"\n";
        let mut given = Vars::new();
        given.insert("n", json!(1));
        let missing = missing_vars(text, "f.yml", &given).expect("yaml");
        let names: Vec<(&str, usize, usize)> = missing
            .iter()
            .map(|(n, l)| (n.as_str(), l.line, l.column))
            .collect();
        assert_eq!(names, [("x", 1, 4), ("y", 2, 5)]);
        let root = super::super::node::load(text, "f.yml").expect("yaml");
        assert!(interpolate(&root, &given, "f.yml").is_err());
        let filled = interpolate(&root, &given.clone().lenient(), "f.yml").expect("lenient");
        assert_eq!(
            filled.to_json(),
            json!({"a": "((x))", "b": ["((y.field))", "((x))"], "c": "$((1 + 2)) 1"})
        );
    }

    fn node(s: &str) -> Node {
        Node::new(Pos { line: 3, column: 7 }, NodeValue::Str(s.to_owned()))
    }

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.insert("n", json!(3))
            .insert("s", json!("hello"))
            .insert("m", json!({"user": "bob", "deep": {"x": true}}));
        v
    }

    #[test]
    fn whole_value_keeps_type() {
        let out = interpolate(&node("((n))"), &vars(), "p.yml").unwrap();
        assert_eq!(out.value, NodeValue::UInt(3));
        let out = interpolate(&node("(( m ))"), &vars(), "p.yml").unwrap();
        assert_eq!(out.to_json(), json!({"user": "bob", "deep": {"x": true}}));
        assert_eq!(out.pos, Pos { line: 3, column: 7 });
        let out = interpolate(&node("((m.deep.x))"), &vars(), "p.yml").unwrap();
        assert_eq!(out.value, NodeValue::Bool(true));
    }

    #[test]
    fn inside_string_is_text() {
        let out = interpolate(&node("a-((s))-((n))-((m.user))-((m.deep))"), &vars(), "f").unwrap();
        assert_eq!(
            out.value,
            NodeValue::Str(r#"a-hello-3-bob-{"x":true}"#.to_owned())
        );
        // Unclosed placeholders are left alone.
        let out = interpolate(&node("x ((s"), &vars(), "f").unwrap();
        assert_eq!(out.value, NodeValue::Str("x ((s".to_owned()));
    }

    #[test]
    fn missing_variable_names_it_and_where() {
        let err = interpolate(&node("pre ((nope)) post"), &vars(), "p.yml").unwrap_err();
        assert_eq!((err.location.line, err.location.column), (3, 7));
        assert_eq!(err.location.file, "p.yml");
        assert!(err.message.contains("`nope`"), "{}", err.message);
        assert_eq!(err.unfilled.as_deref(), Some("nope"));
        assert!(err.hint.unwrap().contains("give `nope` a value"));
        let err = interpolate(&node("((m.nofield))"), &vars(), "p.yml").unwrap_err();
        assert!(
            err.message.contains("no field `nofield`"),
            "{}",
            err.message
        );
        let err = interpolate(&node("((s.x))"), &vars(), "p.yml").unwrap_err();
        assert!(
            err.message.contains("`s` has no field `x`"),
            "{}",
            err.message
        );
        let out = interpolate(&node("n=$((n + 1)) ((s))"), &vars(), "f").unwrap();
        assert_eq!(
            out.value,
            NodeValue::Str("n=$((n + 1)) hello".to_owned()),
            "shell arithmetic is not a placeholder"
        );
        let err = interpolate(&node("(( ))"), &vars(), "p.yml").unwrap_err();
        assert!(err.message.contains("names no variable"), "{}", err.message);
    }

    #[test]
    fn assignments() {
        assert_eq!(
            Vars::parse_assignment("k=v=w"),
            Ok(("k".to_owned(), json!("v=w")))
        );
        assert_eq!(
            Vars::parse_assignment("k="),
            Ok(("k".to_owned(), json!("")))
        );
        assert!(
            Vars::parse_assignment("kv")
                .unwrap_err()
                .contains("NAME=VALUE")
        );
        assert!(
            Vars::parse_assignment("=v")
                .unwrap_err()
                .contains("no variable name")
        );
        assert_eq!(
            Vars::parse_yaml_assignment("n=3"),
            Ok(("n".to_owned(), json!(3)))
        );
        assert_eq!(
            Vars::parse_yaml_assignment("m={a: 1, b: [x]}"),
            Ok(("m".to_owned(), json!({"a": 1, "b": ["x"]})))
        );
        assert!(Vars::parse_yaml_assignment("m={a: 1").is_err());
        let v = Vars::from_assignments(["a=1", "b=2", "a=3"]).unwrap();
        assert_eq!(v.get("a"), Some(&json!("3")));
        assert_eq!(v.names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn overlay_and_debug_hide_values() {
        let mut base = Vars::new();
        base.insert("token", json!("s3cr3t"))
            .insert("keep", json!(1));
        let over = BTreeMap::from([("token".to_owned(), json!("other"))]);
        let v = base.overlay(&over);
        assert_eq!(v.get("token"), Some(&json!("other")));
        assert_eq!(v.get("keep"), Some(&json!(1)));
        let shown = format!("{v:?}");
        assert!(shown.contains("token") && !shown.contains("other") && !shown.contains("s3cr3t"));
    }
}

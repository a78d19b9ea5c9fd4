//! Label and field selectors for pods and secrets.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (requirements are ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    let mut vals = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(format!("invalid label value {v:?}"));
        }
        vals.push(v.to_string());
    }
    Ok(vals)
}

impl LabelSelector {
    /// Parse the `labelSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement in label selector".into());
            }
            if let Some(k) = part.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(format!("invalid label key {k:?}"));
                }
                reqs.push(LabelReq::NotExists(k.to_string()));
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_word(part, "notin") {
                LabelReq::NotIn(k.into(), parse_set(rest)?)
            } else if let Some((k, rest)) = split_word(part, "in") {
                LabelReq::In(k.into(), parse_set(rest)?)
            } else {
                LabelReq::Exists(part.to_string())
            };
            let (key, value) = match &req {
                LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => (k, Some(v)),
                LabelReq::In(k, _) | LabelReq::NotIn(k, _) | LabelReq::Exists(k) => (k, None),
                LabelReq::NotExists(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(format!("invalid label key {key:?}"));
            }
            if let Some(v) = value
                && !valid_value(v)
            {
                return Err(format!("invalid label value {v:?}"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// `key <word> rest` where word is surrounded by whitespace.
fn split_word<'a>(part: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut it = part.splitn(2, char::is_whitespace);
    let key = it.next()?.trim();
    let rest = it.next()?.trim_start();
    let rest = rest.strip_prefix(word)?;
    if rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
        Some((key, rest))
    } else {
        None
    }
}

/// A parsed field selector: (JSON pointer of the field, equal?, value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(&'static str, bool, String)>);

/// The field labels pods support, with where they live in the object.
pub(crate) const POD_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("status.phase", "/status/phase"),
    ("spec.nodeName", "/spec/nodeName"),
    ("spec.restartPolicy", "/spec/restartPolicy"),
    ("spec.schedulerName", "/spec/schedulerName"),
    ("spec.serviceAccountName", "/spec/serviceAccountName"),
    ("status.podIP", "/status/podIP"),
    ("status.nominatedNodeName", "/status/nominatedNodeName"),
];

/// The field labels secrets support.
pub(crate) const SECRET_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("type", "/type"),
];

/// The field labels NetworkPolicies support (the generic object fields only).
pub(crate) const NETWORK_POLICY_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
];

impl FieldSelector {
    /// Parse the `fieldSelector` query syntax with pod fields.
    #[cfg(test)]
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_for(s, POD_FIELDS)
    }

    /// Parse the `fieldSelector` query syntax; `fields` are the supported labels.
    pub fn parse_for(
        s: &str,
        fields: &'static [(&'static str, &'static str)],
    ) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector requirement {part:?}"));
            };
            let field = field.trim();
            let Some((_, ptr)) = fields.iter().find(|(f, _)| *f == field) else {
                return Err(format!("field label not supported: {field}"));
            };
            reqs.push((*ptr, eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether an object satisfies the selector (missing fields compare as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(ptr, eq, value)| {
            let actual = obj.pointer(ptr).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *eq
        })
    }
}

/// Label and field selector together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&p);
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web,db)"));
        assert!(m("tier notin (back)"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!missing"));
        assert!(m("app=web,tier=front"));
        assert!(!m("app=web,tier=back"));
        assert!(m("missing notin (x)"));
        assert!(!m("missing in (x)"));
        assert!(m(""));
    }

    #[test]
    fn label_errors() {
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn fields() {
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&p);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.namespace==ns,status.phase=Running"));
        assert!(!m("status.phase!=Running"));
        assert!(m("spec.nodeName="));
        assert!(FieldSelector::parse("spec.foo=bar").is_err());
    }

    #[test]
    fn secret_fields() {
        let s = json!({"metadata": {"name": "s", "namespace": "ns"}, "type": "Opaque"});
        let m = |q: &str| {
            FieldSelector::parse_for(q, SECRET_FIELDS)
                .unwrap()
                .matches(&s)
        };
        assert!(m("type=Opaque,metadata.name=s"));
        assert!(!m("type!=Opaque"));
        assert!(FieldSelector::parse_for("status.phase=Running", SECRET_FIELDS).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = LabelSelector::parse(&s);
            let _ = FieldSelector::parse(&s);
        }

        #[test]
        fn equality_roundtrip(k in "[a-z][a-z0-9]{0,8}", v in "[a-z0-9]{1,8}", w in "[a-z0-9]{1,8}") {
            let p = pod(json!({ k.clone(): v.clone() }));
            let sel = LabelSelector::parse(&format!("{k}={w}")).unwrap();
            prop_assert_eq!(sel.matches(&p), v == w);
            let sel = LabelSelector::parse(&format!("{k} in ({w},{v})")).unwrap();
            prop_assert!(sel.matches(&p));
        }
    }
}

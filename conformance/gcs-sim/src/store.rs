//! The in-memory buckets, objects and multipart uploads, and the operations on
//! them. Every operation runs under one lock, so preconditions and writes are
//! atomic, as they are in Cloud Storage.

use crate::error::GcsError;
use crate::util::{base64, crc32c, md5, unix_micros};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// Metadata set when an object is written and returned with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WriteMeta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub storage_class: Option<String>,
    /// `x-goog-meta-*` headers, suffix (lowercase, as HTTP/1.1 headers arrive) and value.
    pub custom: Vec<(String, String)>,
}

/// The type Cloud Storage gives an object uploaded without `Content-Type`.
pub(crate) const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// One live object.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub data: Bytes,
    pub generation: u64,
    pub metageneration: u64,
    pub updated: SystemTime,
    /// Quoted, as in the `ETag` header.
    pub etag: String,
    /// Objects assembled from a multipart upload have no MD5.
    pub md5: Option<[u8; 16]>,
    pub crc32c: u32,
    pub meta: WriteMeta,
    /// Parts an object was assembled from (not a composite object: no
    /// `x-goog-component-count`, which GCS gives composed objects only).
    pub components: Option<usize>,
}

impl Object {
    pub fn content_type(&self) -> &str {
        self.meta
            .content_type
            .as_deref()
            .unwrap_or(DEFAULT_CONTENT_TYPE)
    }

    /// `x-goog-hash` values.
    pub fn hashes(&self) -> Vec<String> {
        let mut v = vec![format!("crc32c={}", base64(&self.crc32c.to_be_bytes()))];
        if let Some(m) = &self.md5 {
            v.push(format!("md5={}", base64(m)));
        }
        v
    }
}

/// One uploaded part.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub data: Bytes,
    pub etag: String,
}

/// A multipart upload in progress.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub bucket: String,
    pub object: String,
    pub meta: WriteMeta,
    pub parts: BTreeMap<u32, Part>,
    pub initiated: SystemTime,
}

/// A bucket.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub created: Option<SystemTime>,
    pub objects: BTreeMap<String, Object>,
}

/// Preconditions of a request (`x-goog-if-*`), already parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Preconditions {
    pub generation_match: Option<u64>,
    pub generation_not_match: Option<u64>,
    pub metageneration_match: Option<u64>,
    pub metageneration_not_match: Option<u64>,
}

impl Preconditions {
    /// Check against the live object (if any). A failed `*-not-match` is 304
    /// for reads and 412 otherwise; a failed `*-match` is always 412.
    pub fn check(&self, cur: Option<&Object>, read: bool) -> Result<(), GcsError> {
        let generation = cur.map_or(0, |o| o.generation);
        if let Some(want) = self.generation_match
            && want != generation
        {
            return Err(GcsError::precondition());
        }
        if let Some(want) = self.metageneration_match
            && cur.is_none_or(|o| o.metageneration != want)
        {
            return Err(GcsError::precondition());
        }
        let not_match = self.generation_not_match.is_some_and(|n| n == generation)
            || self
                .metageneration_not_match
                .is_some_and(|n| cur.is_some_and(|o| o.metageneration == n));
        if not_match {
            return Err(if read {
                GcsError::not_modified()
            } else {
                GcsError::precondition()
            });
        }
        Ok(())
    }
}

/// Completed uploads remembered for repeated completions and aborts.
const COMPLETED_KEPT: usize = 256;

/// Everything the simulator stores.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub buckets: BTreeMap<String, Bucket>,
    pub uploads: HashMap<String, Upload>,
    /// Uploads already completed, by id, with the object each one made: a repeated
    /// completion (its first answer was lost) gets the same answer, and a later abort
    /// succeeds without touching the object, as observed on Cloud Storage.
    pub completed: HashMap<String, (String, String, Object)>,
    last_generation: u64,
}

/// Whether `name` is a valid bucket name: 3-63 characters of lowercase letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub(crate) fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Check an object name as Cloud Storage does when an object is created: 1 to
/// 1024 bytes of UTF-8, no carriage return or line feed, not `.` or `..`, not under
/// `.well-known/acme-challenge/`.
pub(crate) fn check_object_name(name: &str) -> Result<(), GcsError> {
    let why = if name.is_empty() {
        "object names cannot be empty"
    } else if name.len() > 1024 {
        "object names are at most 1024 bytes of UTF-8"
    } else if name.contains(['\r', '\n']) {
        "object names cannot contain carriage returns or line feeds"
    } else if name == "." || name == ".." {
        "object names cannot be \".\" or \"..\""
    } else if name.starts_with(".well-known/acme-challenge/") {
        "object names cannot start with \".well-known/acme-challenge/\""
    } else {
        return Ok(());
    };
    Err(GcsError::invalid_argument(format!(
        "Invalid object name: {why}."
    )))
}

fn etag_of(md5: &[u8; 16]) -> String {
    format!("\"{}\"", hex::encode(md5))
}

/// A new object from `data`.
fn object_from(data: Bytes, meta: WriteMeta, generation: u64, now: SystemTime) -> Object {
    let m = md5(&data);
    Object {
        crc32c: crc32c(&data),
        etag: etag_of(&m),
        md5: Some(m),
        data,
        generation,
        metageneration: 1,
        updated: now,
        meta,
        components: None,
    }
}

/// A page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Object names, in order.
    pub objects: Vec<String>,
    /// Rolled-up prefixes, in order.
    pub prefixes: Vec<String>,
    /// Where the next page starts, when this one is truncated.
    pub next: Option<Resume>,
}

/// Where a listing (re)starts: after an object, or after every name under a
/// rolled-up prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    AfterObject(String),
    AfterPrefix(String),
}

impl Resume {
    /// The opaque continuation token.
    pub fn token(&self) -> String {
        match self {
            Resume::AfterObject(k) => format!("o{}", hex::encode(k)),
            Resume::AfterPrefix(p) => format!("p{}", hex::encode(p)),
        }
    }

    /// Parse a continuation token.
    pub fn from_token(t: &str) -> Option<Resume> {
        let decode = |h: &str| String::from_utf8(hex::decode(h).ok()?).ok();
        if let Some(h) = t.strip_prefix('o') {
            Some(Resume::AfterObject(decode(h)?))
        } else if let Some(h) = t.strip_prefix('p') {
            Some(Resume::AfterPrefix(decode(h)?))
        } else {
            None
        }
    }

    /// Whether `name` comes at or before this point.
    fn passed(&self, name: &str) -> bool {
        match self {
            Resume::AfterObject(k) => name <= k.as_str(),
            Resume::AfterPrefix(p) => name <= p.as_str() || name.starts_with(p.as_str()),
        }
    }
}

/// What a listing asks for.
#[derive(Debug, Default)]
pub(crate) struct ListQuery<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub after: Vec<Resume>,
    pub max: usize,
}

/// One page of `objects` (ordered by name) as a listing returns it: names under
/// `prefix` past every `after` point, with names that contain `delimiter` after
/// the prefix rolled up into one prefix each; objects and prefixes together count
/// towards `max`.
pub(crate) fn list_page<'a>(names: impl Iterator<Item = &'a String>, q: &ListQuery<'_>) -> Listing {
    let mut out = Listing::default();
    let mut count = 0usize;
    let mut last: Option<Resume> = None;
    for name in names {
        if !name.starts_with(q.prefix) || q.after.iter().any(|r| r.passed(name)) {
            continue;
        }
        let entry = match q.delimiter.filter(|d| !d.is_empty()) {
            Some(d) => match name[q.prefix.len()..].find(d) {
                Some(i) => {
                    let p = &name[..q.prefix.len() + i + d.len()];
                    if out.prefixes.last().is_some_and(|l| l == p) {
                        continue;
                    }
                    Resume::AfterPrefix(p.to_owned())
                }
                None => Resume::AfterObject(name.clone()),
            },
            None => Resume::AfterObject(name.clone()),
        };
        if count == q.max {
            out.next = last;
            return out;
        }
        count += 1;
        match &entry {
            Resume::AfterObject(k) => out.objects.push(k.clone()),
            Resume::AfterPrefix(p) => out.prefixes.push(p.clone()),
        }
        last = Some(entry);
    }
    out
}

/// A summary of a multipart upload for the control handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadSummary {
    pub id: String,
    pub bucket: String,
    pub object: String,
    pub parts: Vec<u32>,
    pub bytes: u64,
}

impl Store {
    /// A generation strictly greater than any handed out before.
    fn next_generation(&mut self, now: SystemTime) -> u64 {
        self.last_generation = unix_micros(now).max(self.last_generation + 1);
        self.last_generation
    }

    pub fn bucket(&self, name: &str) -> Result<&Bucket, GcsError> {
        self.buckets.get(name).ok_or_else(GcsError::no_such_bucket)
    }

    fn bucket_mut(&mut self, name: &str) -> Result<&mut Bucket, GcsError> {
        self.buckets
            .get_mut(name)
            .ok_or_else(GcsError::no_such_bucket)
    }

    /// Create a bucket; `false` when it exists already.
    pub fn create_bucket(&mut self, name: &str) -> bool {
        if self.buckets.contains_key(name) {
            return false;
        }
        self.buckets.insert(
            name.to_owned(),
            Bucket {
                created: Some(SystemTime::now()),
                objects: BTreeMap::new(),
            },
        );
        true
    }

    /// Delete an empty bucket.
    pub fn delete_bucket(&mut self, name: &str) -> Result<(), GcsError> {
        let b = self.bucket(name)?;
        if !b.objects.is_empty() || self.uploads.values().any(|u| u.bucket == name) {
            return Err(GcsError::new(
                409,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty.",
            ));
        }
        self.buckets.remove(name);
        Ok(())
    }

    /// The live object, if any.
    pub fn object(&self, bucket: &str, name: &str) -> Result<Option<&Object>, GcsError> {
        Ok(self.bucket(bucket)?.objects.get(name))
    }

    /// Write an object (a simple upload).
    pub fn put(
        &mut self,
        bucket: &str,
        name: &str,
        data: Bytes,
        meta: WriteMeta,
        pre: &Preconditions,
    ) -> Result<Object, GcsError> {
        check_object_name(name)?;
        pre.check(self.bucket(bucket)?.objects.get(name), false)?;
        let now = SystemTime::now();
        let g = self.next_generation(now);
        let o = object_from(data, meta, g, now);
        self.bucket_mut(bucket)?
            .objects
            .insert(name.to_owned(), o.clone());
        Ok(o)
    }

    /// Copy `src` to `dst`; `meta` replaces the source's metadata when given.
    #[allow(clippy::too_many_arguments)]
    pub fn copy(
        &mut self,
        src_bucket: &str,
        src: &str,
        src_pre: &Preconditions,
        dst_bucket: &str,
        dst: &str,
        meta: Option<WriteMeta>,
        pre: &Preconditions,
    ) -> Result<Object, GcsError> {
        check_object_name(dst)?;
        let source = self
            .object(src_bucket, src)?
            .ok_or_else(|| GcsError::no_such_key(src_bucket, src))?
            .clone();
        src_pre.check(Some(&source), false)?;
        pre.check(self.bucket(dst_bucket)?.objects.get(dst), false)?;
        let now = SystemTime::now();
        let g = self.next_generation(now);
        let o = Object {
            generation: g,
            metageneration: 1,
            updated: now,
            meta: meta.unwrap_or_else(|| source.meta.clone()),
            ..source
        };
        self.bucket_mut(dst_bucket)?
            .objects
            .insert(dst.to_owned(), o.clone());
        Ok(o)
    }

    /// Delete the live object (`generation`: only if it is that one).
    pub fn delete(
        &mut self,
        bucket: &str,
        name: &str,
        generation: Option<u64>,
        pre: &Preconditions,
    ) -> Result<(), GcsError> {
        let b = self.bucket_mut(bucket)?;
        let Some(cur) = b.objects.get(name) else {
            return Err(GcsError::no_such_key(bucket, name));
        };
        if generation.is_some_and(|g| g != cur.generation) {
            return Err(GcsError::no_such_key(bucket, name));
        }
        pre.check(Some(cur), false)?;
        b.objects.remove(name);
        Ok(())
    }

    /// Start a multipart upload.
    pub fn initiate(
        &mut self,
        bucket: &str,
        name: &str,
        meta: WriteMeta,
    ) -> Result<String, GcsError> {
        check_object_name(name)?;
        self.bucket(bucket)?;
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.uploads.insert(
            id.clone(),
            Upload {
                bucket: bucket.to_owned(),
                object: name.to_owned(),
                meta,
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(id)
    }

    fn upload_mut(&mut self, bucket: &str, name: &str, id: &str) -> Result<&mut Upload, GcsError> {
        self.bucket(bucket)?;
        match self.uploads.get_mut(id) {
            Some(u) if u.bucket == bucket && u.object == name => Ok(u),
            _ => Err(GcsError::no_such_upload()),
        }
    }

    /// `NoSuchBucket` or `NoSuchUpload` unless upload `id` is for this object.
    /// A completed upload counts (it is remembered for repeated completions).
    pub fn upload_exists(&mut self, bucket: &str, name: &str, id: &str) -> Result<(), GcsError> {
        if let Some((b, n, _)) = self.completed.get(id)
            && b == bucket
            && n == name
        {
            return Ok(());
        }
        self.upload_mut(bucket, name, id).map(|_| ())
    }

    /// Store one part (replacing an earlier part with the same number); the ETag.
    pub fn put_part(
        &mut self,
        bucket: &str,
        name: &str,
        id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<String, GcsError> {
        let u = self.upload_mut(bucket, name, id)?;
        let etag = etag_of(&md5(&data));
        u.parts.insert(
            number,
            Part {
                data,
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    /// Complete an upload from the listed `(part number, ETag)`s: they must be in
    /// ascending order, exist with those ETags, and all but the last be at least
    /// `min_part` bytes. The object then replaces any live one; the upload (all its
    /// parts, listed or not) is gone.
    pub fn complete(
        &mut self,
        bucket: &str,
        name: &str,
        id: &str,
        listed: &[(u32, String)],
        min_part: usize,
    ) -> Result<Object, GcsError> {
        if let Some((b, n, o)) = self.completed.get(id)
            && b == bucket
            && n == name
        {
            return Ok(o.clone());
        }
        let u = self.upload_mut(bucket, name, id)?;
        if listed.is_empty() {
            return Err(GcsError::malformed_xml());
        }
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(GcsError::new(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ));
        }
        let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
        let mut parts = Vec::with_capacity(listed.len());
        for (n, etag) in listed {
            match u.parts.get(n) {
                Some(p) if unquote(&p.etag) == unquote(etag) => parts.push(p),
                _ => {
                    return Err(GcsError::new(
                        400,
                        "InvalidPart",
                        "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
                    ));
                }
            }
        }
        if parts[..parts.len() - 1]
            .iter()
            .any(|p| p.data.len() < min_part)
        {
            return Err(GcsError::new(
                400,
                "EntityTooSmall",
                format!(
                    "Your proposed upload is smaller than the minimum allowed object size: every part but the last must be at least {min_part} bytes."
                ),
            ));
        }
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        let mut data = BytesMut::with_capacity(total);
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        for p in &parts {
            data.extend_from_slice(&p.data);
            md5s.extend_from_slice(&md5(&p.data));
        }
        let count = parts.len();
        let meta = u.meta.clone();
        self.uploads.remove(id);
        let data = data.freeze();
        let now = SystemTime::now();
        let g = self.next_generation(now);
        let o = Object {
            crc32c: crc32c(&data),
            // Not an MD5 of the content, as for any object assembled from parts.
            etag: format!("\"{}-{count}\"", hex::encode(md5(&md5s))),
            md5: None,
            data,
            generation: g,
            metageneration: 1,
            updated: now,
            meta,
            components: Some(count),
        };
        self.bucket_mut(bucket)?
            .objects
            .insert(name.to_owned(), o.clone());
        // Remembered for a while, not for ever: each entry pins its object's data.
        if self.completed.len() >= COMPLETED_KEPT {
            self.completed.clear();
        }
        self.completed.insert(
            id.to_owned(),
            (bucket.to_owned(), name.to_owned(), o.clone()),
        );
        Ok(o)
    }

    /// Abort an upload: its parts are gone. Aborting a completed upload succeeds and
    /// leaves its object alone.
    pub fn abort(&mut self, bucket: &str, name: &str, id: &str) -> Result<(), GcsError> {
        if let Some((b, n, _)) = self.completed.get(id)
            && b == bucket
            && n == name
        {
            return Ok(());
        }
        self.upload_mut(bucket, name, id)?;
        self.uploads.remove(id);
        Ok(())
    }

    /// Uploads in progress, oldest first.
    pub fn uploads(&self) -> Vec<UploadSummary> {
        let mut v: Vec<(&String, &Upload)> = self.uploads.iter().collect();
        v.sort_by(|a, b| a.1.initiated.cmp(&b.1.initiated).then(a.0.cmp(b.0)));
        v.into_iter()
            .map(|(id, u)| UploadSummary {
                id: id.clone(),
                bucket: u.bucket.clone(),
                object: u.object.clone(),
                parts: u.parts.keys().copied().collect(),
                bytes: u.parts.values().map(|p| p.data.len() as u64).sum(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn delimiter_rolls_up_prefixes() {
        let n = names(&["a/1", "a/2", "a/b/3", "b", "c/4", "d"]);
        let l = list_page(
            n.iter(),
            &ListQuery {
                delimiter: Some("/"),
                max: 1000,
                ..Default::default()
            },
        );
        assert_eq!(l.objects, ["b", "d"]);
        assert_eq!(l.prefixes, ["a/", "c/"]);
        assert_eq!(l.next, None);
        let l = list_page(
            n.iter(),
            &ListQuery {
                prefix: "a/",
                delimiter: Some("/"),
                max: 1000,
                ..Default::default()
            },
        );
        assert_eq!(l.objects, ["a/1", "a/2"]);
        assert_eq!(l.prefixes, ["a/b/"]);
    }

    #[test]
    fn pages_resume_after_prefixes() {
        let n = names(&["a/1", "a/2", "b", "c/1"]);
        let mut q = ListQuery {
            delimiter: Some("/"),
            max: 1,
            ..Default::default()
        };
        let p1 = list_page(n.iter(), &q);
        assert_eq!(p1.prefixes, ["a/"]);
        q.after = vec![p1.next.clone().unwrap()];
        let p2 = list_page(n.iter(), &q);
        assert_eq!(p2.objects, ["b"]);
        q.after = vec![p2.next.clone().unwrap()];
        let p3 = list_page(n.iter(), &q);
        assert_eq!(p3.prefixes, ["c/"]);
        assert_eq!(p3.next, None, "nothing after the last entry");
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        for r in [
            Resume::AfterObject("a/b €".into()),
            Resume::AfterPrefix("x/".into()),
        ] {
            assert_eq!(Resume::from_token(&r.token()), Some(r));
        }
        assert_eq!(Resume::from_token("zz"), None);
        assert_eq!(Resume::from_token("o0"), None);
    }

    #[test]
    fn preconditions() {
        let o = object_from(
            Bytes::from_static(b"x"),
            WriteMeta::default(),
            7,
            SystemTime::now(),
        );
        let p = |gm, gnm| Preconditions {
            generation_match: gm,
            generation_not_match: gnm,
            ..Default::default()
        };
        assert!(p(Some(0), None).check(None, false).is_ok());
        assert_eq!(
            p(Some(0), None).check(Some(&o), false).unwrap_err().status,
            412
        );
        assert!(p(Some(7), None).check(Some(&o), false).is_ok());
        assert_eq!(
            p(Some(8), None).check(Some(&o), false).unwrap_err().status,
            412
        );
        assert_eq!(
            p(None, Some(7)).check(Some(&o), true).unwrap_err().status,
            304
        );
        assert_eq!(
            p(None, Some(7)).check(Some(&o), false).unwrap_err().status,
            412
        );
        assert!(p(None, Some(8)).check(Some(&o), true).is_ok());
    }

    #[test]
    fn names_and_buckets() {
        assert!(valid_bucket_name("jetbridge-test"));
        assert!(valid_bucket_name("a.b_c"));
        assert!(!valid_bucket_name("ab"));
        assert!(!valid_bucket_name("Upper"));
        assert!(!valid_bucket_name("-dash"));
        assert!(check_object_name("a b/ü?#%").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a\nb",
            "a\rb",
            ".well-known/acme-challenge/x",
        ] {
            assert_eq!(check_object_name(bad).unwrap_err().status, 400, "{bad:?}");
        }
        assert!(check_object_name(&"x".repeat(1024)).is_ok());
        assert!(check_object_name(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn multipart_rules() {
        let mut s = Store::default();
        s.create_bucket("b");
        let id = s.initiate("b", "o", WriteMeta::default()).unwrap();
        let e1 = s
            .put_part("b", "o", &id, 1, Bytes::from(vec![1u8; 10]))
            .unwrap();
        let e2 = s
            .put_part("b", "o", &id, 2, Bytes::from_static(b"end"))
            .unwrap();
        assert!(
            s.object("b", "o").unwrap().is_none(),
            "not visible before completion"
        );
        let code = |r: Result<Object, GcsError>| r.unwrap_err().code;
        assert_eq!(
            code(s.complete("b", "o", &id, &[(2, e2.clone()), (1, e1.clone())], 0)),
            "InvalidPartOrder"
        );
        assert_eq!(
            code(s.complete("b", "o", &id, &[(1, e2.clone()), (2, e2.clone())], 0)),
            "InvalidPart"
        );
        assert_eq!(
            code(s.complete("b", "o", &id, &[(1, e1.clone()), (3, e2.clone())], 0)),
            "InvalidPart"
        );
        assert_eq!(
            code(s.complete("b", "o", &id, &[(1, e1.clone()), (2, e2.clone())], 11)),
            "EntityTooSmall"
        );
        assert_eq!(code(s.complete("b", "o", &id, &[], 0)), "MalformedXML");
        assert_eq!(
            code(s.complete("b", "other", &id, &[(1, e1.clone())], 0)),
            "NoSuchUpload"
        );
        // Failed completions leave the upload as it was.
        assert_eq!(s.uploads()[0].parts, [1, 2]);
        let o = s.complete("b", "o", &id, &[(1, e1), (2, e2)], 10).unwrap();
        assert_eq!(&o.data[..], &[&[1u8; 10][..], b"end"].concat()[..]);
        assert!(o.etag.ends_with("-2\""));
        assert!(s.uploads().is_empty());
        // Completed: a repeat gets the same object, an abort succeeds and keeps it.
        let again = s.complete("b", "o", &id, &[], 0).unwrap();
        assert_eq!((again.generation, &again.etag), (o.generation, &o.etag));
        s.abort("b", "o", &id).unwrap();
        assert!(s.buckets["b"].objects.contains_key("o"));
        assert_eq!(code(s.complete("b", "other", &id, &[], 0)), "NoSuchUpload");
    }

    proptest! {
        /// Paging through a listing with any page size gives exactly the one-page
        /// answer: no entry lost or repeated.
        #[test]
        fn pages_concatenate_to_the_whole(
            set in proptest::collection::btree_set("[ab/]{1,6}", 0..30),
            max in 1usize..5,
            delim in proptest::option::of(Just("/")),
            prefix in "[ab/]{0,2}",
        ) {
            let n: Vec<String> = set.into_iter().collect();
            let whole = list_page(n.iter(), &ListQuery {
                prefix: &prefix, delimiter: delim, max: usize::MAX, ..Default::default()
            });
            let mut objects = Vec::new();
            let mut prefixes = Vec::new();
            let mut after = Vec::new();
            for _ in 0..100 {
                let page = list_page(n.iter(), &ListQuery {
                    prefix: &prefix, delimiter: delim, max, after: after.clone(),
                });
                prop_assert!(page.objects.len() + page.prefixes.len() <= max);
                objects.extend(page.objects);
                prefixes.extend(page.prefixes);
                match page.next {
                    Some(r) => after = vec![r],
                    None => break,
                }
            }
            prop_assert_eq!(objects, whole.objects);
            prop_assert_eq!(prefixes, whole.prefixes);
        }
    }
}

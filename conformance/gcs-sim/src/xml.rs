//! XML documents: listings and multipart results out, `CompleteMultipartUpload` in.

use crate::error::GcsError;
use crate::store::{Listing, Object};
use crate::util::{percent_encode, rfc3339_millis, xml_escape};
use quick_xml::events::Event;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

const HEAD: &str = "<?xml version='1.0' encoding='UTF-8'?>";
/// The namespace of listings.
const LIST_NS: &str = "http://doc.s3.amazonaws.com/2006-03-01";
/// The namespace of multipart results.
const MULTIPART_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// How a listing was asked for, echoed back in the result.
#[derive(Debug, Default)]
pub(crate) struct ListEcho<'a> {
    pub bucket: &'a str,
    pub v2: bool,
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub max_keys: usize,
    pub url_encoded: bool,
    pub continuation_token: Option<&'a str>,
    pub start_after: Option<&'a str>,
    pub marker: Option<&'a str>,
}

fn el(out: &mut String, name: &str, text: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", xml_escape(text));
}

/// A `ListBucketResult` (V2 with `list-type=2`, else V1).
pub(crate) fn list_result(
    echo: &ListEcho<'_>,
    page: &Listing,
    objects: &BTreeMap<String, Object>,
) -> String {
    let name = |s: &str| {
        if echo.url_encoded {
            percent_encode(s)
        } else {
            s.to_owned()
        }
    };
    let mut out = String::with_capacity(256 + 256 * page.objects.len());
    out.push_str(HEAD);
    let _ = write!(out, "<ListBucketResult xmlns='{LIST_NS}'>");
    el(&mut out, "Name", echo.bucket);
    el(&mut out, "Prefix", &name(echo.prefix));
    if echo.v2 {
        if let Some(t) = echo.continuation_token {
            el(&mut out, "ContinuationToken", t);
        }
        if let Some(s) = echo.start_after {
            el(&mut out, "StartAfter", &name(s));
        }
    } else {
        el(&mut out, "Marker", &name(echo.marker.unwrap_or("")));
    }
    let _ = write!(out, "<MaxKeys>{}</MaxKeys>", echo.max_keys);
    if let Some(d) = echo.delimiter {
        el(&mut out, "Delimiter", &name(d));
    }
    if echo.url_encoded {
        el(&mut out, "EncodingType", "url");
    }
    let _ = write!(out, "<IsTruncated>{}</IsTruncated>", page.next.is_some());
    for k in &page.objects {
        let Some(o) = objects.get(k) else { continue };
        out.push_str("<Contents>");
        el(&mut out, "Key", &name(k));
        let _ = write!(
            out,
            "<Generation>{}</Generation><MetaGeneration>{}</MetaGeneration>",
            o.generation, o.metageneration
        );
        el(&mut out, "LastModified", &rfc3339_millis(o.updated));
        el(&mut out, "ETag", &o.etag);
        let _ = write!(out, "<Size>{}</Size>", o.data.len());
        out.push_str("</Contents>");
    }
    for p in &page.prefixes {
        out.push_str("<CommonPrefixes>");
        el(&mut out, "Prefix", &name(p));
        out.push_str("</CommonPrefixes>");
    }
    if echo.v2 {
        let _ = write!(
            out,
            "<KeyCount>{}</KeyCount>",
            page.objects.len() + page.prefixes.len()
        );
        if let Some(n) = &page.next {
            el(&mut out, "NextContinuationToken", &n.token());
        }
    } else if let Some(n) = &page.next {
        let last = match n {
            crate::store::Resume::AfterObject(k) | crate::store::Resume::AfterPrefix(k) => k,
        };
        el(&mut out, "NextMarker", &name(last));
    }
    out.push_str("</ListBucketResult>");
    out
}

/// `InitiateMultipartUploadResult`.
pub(crate) fn initiate_result(bucket: &str, key: &str, upload_id: &str) -> String {
    let mut out = String::from(HEAD);
    let _ = write!(
        out,
        "<InitiateMultipartUploadResult xmlns='{MULTIPART_NS}'>"
    );
    el(&mut out, "Bucket", bucket);
    el(&mut out, "Key", key);
    el(&mut out, "UploadId", upload_id);
    out.push_str("</InitiateMultipartUploadResult>");
    out
}

/// `CompleteMultipartUploadResult`.
pub(crate) fn complete_result(location: &str, bucket: &str, key: &str, etag: &str) -> String {
    let mut out = String::from(HEAD);
    let _ = write!(
        out,
        "<CompleteMultipartUploadResult xmlns='{MULTIPART_NS}'>"
    );
    el(&mut out, "Location", location);
    el(&mut out, "Bucket", bucket);
    el(&mut out, "Key", key);
    el(&mut out, "ETag", etag);
    out.push_str("</CompleteMultipartUploadResult>");
    out
}

/// `CopyObjectResult`.
pub(crate) fn copy_result(o: &Object) -> String {
    let mut out = String::from(HEAD);
    out.push_str("<CopyObjectResult>");
    el(&mut out, "LastModified", &rfc3339_millis(o.updated));
    el(&mut out, "ETag", &o.etag);
    out.push_str("</CopyObjectResult>");
    out
}

/// `ListAllMyBucketsResult` (the answer to `GET /`).
pub(crate) fn buckets_result(buckets: &[(String, SystemTime)]) -> String {
    let mut out = String::from(HEAD);
    let _ = write!(out, "<ListAllMyBucketsResult xmlns='{LIST_NS}'>");
    out.push_str("<Owner><ID>jetbridge-gcs-sim</ID></Owner><Buckets>");
    for (name, created) in buckets {
        out.push_str("<Bucket>");
        el(&mut out, "Name", name);
        el(&mut out, "CreationDate", &rfc3339_millis(*created));
        out.push_str("</Bucket>");
    }
    out.push_str("</Buckets></ListAllMyBucketsResult>");
    out
}

/// The `(PartNumber, ETag)` pairs of a `CompleteMultipartUpload` document, in
/// document order. Anything else than `<CompleteMultipartUpload>` with `<Part>`s
/// that each have one number and one ETag is `MalformedXML`.
pub(crate) fn parse_complete(body: &[u8]) -> Result<Vec<(u32, String)>, GcsError> {
    let malformed = GcsError::malformed_xml;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let mut number: Option<u32> = None;
    let mut etag: Option<String> = None;
    let mut saw_root = false;
    let mut buf = Vec::new();
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(|_| malformed())?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match (stack.len(), name.as_str()) {
                    (0, "CompleteMultipartUpload") => saw_root = true,
                    (0, _) => return Err(malformed()),
                    (1, "Part") => {
                        number = None;
                        etag = None;
                    }
                    _ => {}
                }
                stack.push(name);
            }
            Event::End(_) => {
                let name = stack.pop().ok_or_else(malformed)?;
                if stack.len() == 1 && name == "Part" {
                    match (number.take(), etag.take()) {
                        (Some(n), Some(t)) => parts.push((n, t)),
                        _ => return Err(malformed()),
                    }
                }
            }
            Event::Empty(e) => {
                if stack.is_empty() {
                    return Err(malformed());
                }
                if stack.len() == 1 && e.local_name().as_ref() == b"Part" {
                    return Err(malformed());
                }
            }
            Event::Text(t) => {
                // Entities arrive as separate `GeneralRef` events.
                let text = t.decode().map_err(|_| malformed())?;
                let at = (stack.len(), stack.last().map(String::as_str));
                match at {
                    (3, Some("PartNumber")) => {
                        let n: u32 = text.trim().parse().map_err(|_| malformed())?;
                        if !(1..=10_000).contains(&n) {
                            return Err(GcsError::invalid_argument(
                                "Part number must be an integer between 1 and 10000, inclusive.",
                            ));
                        }
                        number = Some(n);
                    }
                    (3, Some("ETag")) => {
                        let mut s = etag.take().unwrap_or_default();
                        s.push_str(&text);
                        etag = Some(s);
                    }
                    _ if text.trim().is_empty() => {}
                    (1 | 2, _) => return Err(malformed()),
                    _ => {}
                }
            }
            // An entity inside an ETag (`&quot;`).
            Event::GeneralRef(r)
                if stack.len() == 3 && stack.last().map(String::as_str) == Some("ETag") =>
            {
                let c = match r.resolve_char_ref().map_err(|_| malformed())? {
                    Some(c) => c,
                    None => match r.decode().map_err(|_| malformed())?.as_ref() {
                        "quot" => '"',
                        "amp" => '&',
                        "apos" => '\'',
                        "lt" => '<',
                        "gt" => '>',
                        _ => return Err(malformed()),
                    },
                };
                let mut s = etag.take().unwrap_or_default();
                s.push(c);
                etag = Some(s);
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_root || !stack.is_empty() {
        return Err(malformed());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_documents() {
        // As object_store writes it: quotes left unescaped inside ETag.
        let doc = br#"<CompleteMultipartUpload><Part><ETag>"abc"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>&quot;def&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(doc).unwrap(),
            vec![(1, "\"abc\"".to_owned()), (2, "\"def\"".to_owned())]
        );
        let pretty = b"<?xml version=\"1.0\"?>\n<CompleteMultipartUpload>\n  <Part>\n    <PartNumber>3</PartNumber>\n    <ETag>x</ETag>\n  </Part>\n</CompleteMultipartUpload>\n";
        assert_eq!(parse_complete(pretty).unwrap(), vec![(3, "x".to_owned())]);
        for bad in [
            &b"not xml"[..],
            b"<Other/>",
            b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part>",
        ] {
            assert_eq!(
                parse_complete(bad).unwrap_err().code,
                "MalformedXML",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = b"<CompleteMultipartUpload><Part><PartNumber>10001</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(big).unwrap_err().code, "InvalidArgument");
    }
}

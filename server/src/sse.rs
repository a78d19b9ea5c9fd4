//! Reading the API's event stream (Server-Sent Events), for clients: line ends as
//! the SSE format allows them, whole blocks, and their `id`, `event` and `data`.

/// Append `chunk` with its line ends made `\n` (SSE allows `\r\n` and `\r`); a `\r`
/// at the end of a chunk waits for the next one, which may begin with its `\n`.
pub fn push_normalized(buf: &mut Vec<u8>, chunk: &[u8], pending_cr: &mut bool) {
    for &b in chunk {
        if *pending_cr {
            *pending_cr = false;
            buf.push(b'\n');
            if b == b'\n' {
                continue;
            }
        }
        if b == b'\r' {
            *pending_cr = true;
        } else {
            buf.push(b);
        }
    }
}

/// The end of the first event block (after its blank line), if one is whole.
pub fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// One SSE block: id, event name, data.
pub fn parse_block(block: &str) -> Option<(Option<u64>, String, String)> {
    let (mut id, mut event, mut data) = (None, String::new(), Vec::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
    (!event.is_empty()).then(|| (id, event, data.join("\n")))
}

/// Every event block of a whole stream's text, in order.
pub fn parse_all(text: &str) -> Vec<(Option<u64>, String, String)> {
    let mut buf = Vec::new();
    let mut pending_cr = false;
    push_normalized(&mut buf, text.as_bytes(), &mut pending_cr);
    String::from_utf8_lossy(&buf)
        .split("\n\n")
        .filter_map(parse_block)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn sse_blocks_parse_with_multi_line_data() {
        let b = parse_block("id: 7\nevent: output\ndata: {\"a\":\ndata: 1}\n").unwrap();
        assert_eq!(b, (Some(7), "output".to_owned(), "{\"a\":\n1}".to_owned()));
        assert_eq!(parse_block(": keep-alive\n"), None);
        let v: Value = serde_json::from_str(&b.2).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn crlf_and_cr_line_ends_become_newlines_even_split_across_chunks() {
        let mut buf = Vec::new();
        let mut cr = false;
        push_normalized(&mut buf, b"event: x\r", &mut cr);
        push_normalized(&mut buf, b"\ndata: 1\r\r", &mut cr);
        push_normalized(&mut buf, b"event: y\rdata: 2\r", &mut cr);
        push_normalized(&mut buf, b"\r", &mut cr);
        // The last `\r` waits: it may be the start of a `\r\n`.
        assert!(cr);
        push_normalized(&mut buf, b"event: z", &mut cr);
        assert_eq!(buf, b"event: x\ndata: 1\n\nevent: y\ndata: 2\n\nevent: z");
    }

    #[test]
    fn a_block_is_whole_only_after_its_blank_line() {
        assert_eq!(find_blank_line(b"event: x\ndata: 1\n"), None);
        assert_eq!(find_blank_line(b"event: x\n\nevent: y"), Some(10));
    }
}

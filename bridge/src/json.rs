//! JSON written by hand on the per-batch hot paths (the MultiLang `processRecords` line, the
//! Lambda event): string escaping exactly as serde_json does it.

/// Appends the contents of a JSON string for `s` (without the quotes), escaped as serde_json
/// escapes: `"` and `\`, the short escapes, and `\u00XX` for other control characters.
pub fn push_escaped(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // The usual case (keys, sequence numbers): nothing to escape, one copy. A fold without
    // an early exit, so that the compiler checks many bytes per instruction.
    let needs_escape = bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        buf.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(b >> 4)]);
                buf.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(short);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::push_escaped;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() -> Result<(), Box<dyn std::error::Error>> {
        let mut nasty: String = (0u8..0x20).map(char::from).collect();
        nasty.push_str("\"quoted\" back\\slash é ü 🦀 \u{7f} </script>");
        let long_plain = "49590338271490256608559692538361571095921575989136588898".repeat(3);
        let late_quote = format!("{long_plain}\"");
        for s in [
            nasty.as_str(),
            "",
            "plain",
            "\"",
            "\\",
            &long_plain,
            &late_quote,
        ] {
            let mut mine = vec![b'"'];
            push_escaped(&mut mine, s);
            mine.push(b'"');
            assert_eq!(std::str::from_utf8(&mine)?, serde_json::to_string(s)?);
        }
        Ok(())
    }
}

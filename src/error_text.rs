//! One line of text for an error and every cause under it, for logs, `/status` and the proxy's
//! error bodies, and the escaping that keeps text from outside (a client's path, a Redis server's
//! error) from splitting or forging a log line. A leaf: it knows nothing of the crate's own errors.
use std::borrow::Cow;
use std::fmt::Write;

/// The error and its sources, joined: "cannot reach Contentstack: client error (Connect): ...".
/// A source whose text the line already holds (an error that prints its cause itself) is not
/// repeated. Line breaks, other control characters and invisible reordering characters are
/// escaped ([`escape_controls`]): a cause may quote what a peer sent, newlines included.
pub fn error_chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    match escape_controls(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// `text` with control characters and the invisible characters that reorder or hide text (bidi
/// controls, zero-width characters) written as Rust escapes; quotes and other characters kept, for
/// messages that people read.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    escape_where(text, |c| !c.is_control() && !is_invisible(c))
}

/// Bidirectional controls and zero-width characters: shown as they are, they make a line read
/// differently from what it holds.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `text` as one unambiguous run of printable ASCII: control characters (a newline would start a
/// forged log line), quotes and backslashes (which delimit a logged value) and every non-ASCII
/// character (bidirectional overrides reorder what a reader sees) are written as Rust escapes
/// (`\n`, `\"`, `\u{202e}`). Text that needs none is returned as it is, without allocating.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_where(text, |c| {
        c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\'
    })
}

fn escape_where(text: &str, plain: impl Fn(char) -> bool) -> Cow<'_, str> {
    if text.chars().all(&plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if plain(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_outside_printable_ascii_reaches_a_log_line_as_it_is() {
        assert!(matches!(escape("/v3/content_types"), Cow::Borrowed(_)));
        for (text, escaped) in [
            ("/v3/a\u{202e}b", "/v3/a\\u{202e}b"),
            ("/v3/x\"status=200", "/v3/x\\\"status=200"),
            (
                "parse error\nUnexpected `84`\r\n",
                "parse error\\nUnexpected `84`\\r\\n",
            ),
            ("\u{1b}[31mred\u{0}", "\\u{1b}[31mred\\u{0}"),
            ("back\\slash\tand é", "back\\\\slash\\tand \\u{e9}"),
        ] {
            assert_eq!(escape(text), escaped);
        }
    }

    #[test]
    fn error_chains_are_escaped() {
        #[derive(Debug)]
        struct Peer;
        impl std::fmt::Display for Peer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("redis: bad reply\nlevel=ERROR forged")
            }
        }
        impl std::error::Error for Peer {}
        assert_eq!(
            error_chain_text(&Peer),
            "redis: bad reply\\nlevel=ERROR forged"
        );
        assert_eq!(
            escape_controls("\"kept\" é \u{202e}\r"),
            "\"kept\" é \\u{202e}\\r"
        );
    }
}

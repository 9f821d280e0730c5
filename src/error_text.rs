//! One line of text for an error and every cause under it, for logs, `/status` and the proxy's
//! error bodies. A leaf: it knows nothing of the crate's own errors.

/// The error and its sources, joined: "cannot reach Contentstack: client error (Connect): ...".
/// A source whose text the line already holds (an error that prints its cause itself) is not
/// repeated.
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
    text
}

//! The two exposition formats `/metrics` serves, and which one a scraper asked for.
//!
//! The registry encodes OpenMetrics, whose counter families are named without `_total` in their
//! `# TYPE`/`# HELP` lines (`# TYPE x counter` above `x_total 3`) and which ends with `# EOF`. A
//! scraper that reads the classic text format (0.0.4) matches `# TYPE` by sample name: it would
//! find no type for `x_total` and take every counter for untyped. So OpenMetrics is served only to
//! a scraper that accepts it (Prometheus says so in `Accept`), and everyone else gets the same
//! samples as text 0.0.4: counter families named with `_total`, no `# UNIT` (the text format has
//! none), no `# EOF`.
use std::collections::HashSet;

/// An exposition format and its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// The classic Prometheus text format, `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it with a quality above 0, else text.
    pub fn accepted(accept: Option<&str>) -> Format {
        let accepts_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if accepts_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The OpenMetrics `exposition` as text 0.0.4.
pub(super) fn to_text(exposition: &str) -> String {
    let counters: HashSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(exposition.len());
    for line in exposition.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_typed_under_their_sample_names_and_nothing_openmetrics_remains() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\n\
                    # HELP x_age Age.\n# TYPE x_age gauge\n# UNIT x_age seconds\nx_age 1.5\n# EOF\n";
        assert_eq!(
            to_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n\
             # HELP x_age Age.\n# TYPE x_age gauge\nx_age 1.5\n"
        );
    }

    #[test]
    fn openmetrics_only_for_a_scraper_that_accepts_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::accepted(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::accepted(None), Format::Text);
        assert_eq!(Format::accepted(Some("*/*")), Format::Text);
        assert_eq!(Format::accepted(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::accepted(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Text
        );
    }
}

//! W3C trace context (`traceparent`): the incoming header read, this hop's span made, and
//! the header forwarded with this hop's span as the parent.
//!
//! Must not: trust a malformed header: it is treated as absent, and a new trace starts.

/// This hop's place in a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// This hop's span: 16 hex digits.
    pub span_id: String,
    /// The caller's span, when a `traceparent` came in.
    pub parent_span_id: Option<String>,
    /// Whether the trace is recorded (the caller's flag, or this node's sampling).
    pub sampled: bool,
}

/// A parsed `traceparent`: version 00, trace id, parent id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Reads a `traceparent` header value; `None` when it is not a valid version-00 one.
pub fn parse(value: &str) -> Option<Incoming> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || !is_hex_id(trace, 32) || !is_hex_id(span, 16) {
        return None;
    }
    if flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming { trace_id: trace.to_owned(), span_id: span.to_owned(), sampled: flags & 1 == 1 })
}

impl TraceContext {
    /// This hop's context: continues `incoming` when there is one (its sampling decision
    /// stands), else starts a trace sampled by `sample()`.
    pub fn continue_or_start(
        incoming: Option<Incoming>,
        mut random_hex: impl FnMut(usize) -> String,
        sample: impl FnOnce() -> bool,
    ) -> TraceContext {
        let span_id = random_hex(16);
        match incoming {
            Some(i) => {
                TraceContext { trace_id: i.trace_id, span_id, parent_span_id: Some(i.span_id), sampled: i.sampled }
            }
            None => TraceContext { trace_id: random_hex(32), span_id, parent_span_id: None, sampled: sample() },
        }
    }

    /// The header to forward: this hop's span is the next one's parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_header_is_continued_and_a_bad_one_starts_a_trace() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let incoming = parse(h).expect("valid");
        assert!(incoming.sampled);
        let mut n = 0;
        let hex = |len: usize| {
            n += 1;
            format!("{n:0>len$x}")
        };
        let ctx = TraceContext::continue_or_start(Some(incoming), hex, || false);
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(ctx.sampled, "the caller's decision stands");
        assert_eq!(ctx.traceparent(), format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ctx.span_id));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(!parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid").sampled);
    }
}
